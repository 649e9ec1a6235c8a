package broker

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"time"
)

// LegacyIVSize is the AES-GCM IV length of format-1 wraps and of the
// browser's recovery wraps.
const LegacyIVSize = 12

// keyCheckLabel is the fixed message of the key check value. The check
// value is HMAC-SHA256(key = MK, message = label): it identifies an MK
// without revealing anything about it (HMAC is a PRF under the MK).
const keyCheckLabel = "keybroker key check value v1"

// KeyCheckValue returns the base64 key check value of mk.
func KeyCheckValue(mk []byte) string {
	mac := hmac.New(sha256.New, mk)
	mac.Write([]byte(keyCheckLabel))
	return base64.StdEncoding.EncodeToString(mac.Sum(nil))
}

// keyCheckMatches compares mk against a stored check value in constant time.
func keyCheckMatches(mk []byte, stored string) bool {
	return subtle.ConstantTimeCompare([]byte(KeyCheckValue(mk)), []byte(stored)) == 1
}

// keyProofLabel is the fixed message of the key possession proof.
const keyProofLabel = "keybroker key possession proof v1"

// KeyProofSize is the length in bytes of a key possession proof.
const KeyProofSize = sha256.Size

// KeyProof returns the key possession proof of mk: HMAC-SHA256(key = MK,
// message = "keybroker key possession proof v1"), 32 bytes. A client
// that holds the MK sends it (base64, as keyProof) to show that it does
// without sending the key. The server stores only a SHA-256 of it (see
// keyProofVerifier): whoever reads the database sees that hash and the
// key check value, and neither yields the proof — SHA-256 is one-way,
// and the key check value is the same PRF under another label.
func KeyProof(mk []byte) []byte {
	mac := hmac.New(sha256.New, mk)
	mac.Write([]byte(keyProofLabel))
	return mac.Sum(nil)
}

// keyProofHash is what the database keeps of a proof: base64 SHA-256.
func keyProofHash(proof []byte) string {
	sum := sha256.Sum256(proof)
	return base64.StdEncoding.EncodeToString(sum[:])
}

// keyProofVerifier is the stored verifier of mk's proof for a row whose
// key check value is kcv: the proof's hash, ':' and kcv. The key check
// value ties the verifier to its key: a release that does not know the
// column rotates the key without clearing it, and the verifier is then
// recognisably stale (currentProofHash) rather than wrong.
func keyProofVerifier(mk []byte, kcv string) string {
	proof := KeyProof(mk)
	defer wipe(proof)
	return keyProofHash(proof) + ":" + kcv
}

// currentProofHash returns the proof hash of v's verifier when v has one
// that belongs to its current key check value.
func currentProofHash(v *Vault) (string, bool) {
	if v.KeyProof == nil || v.KeyCheck == nil {
		return "", false
	}
	hash, boundTo, ok := strings.Cut(*v.KeyProof, ":")
	if !ok || hash == "" || !equalConstantTime([]byte(boundTo), []byte(*v.KeyCheck)) {
		return "", false
	}
	return hash, true
}

// keyProofMatches compares a client's proof against a stored proof hash
// in constant time.
func keyProofMatches(proof []byte, storedHash string) bool {
	return subtle.ConstantTimeCompare([]byte(keyProofHash(proof)), []byte(storedHash)) == 1
}

// decodeStoredWrap returns the ciphertext a KEK opens for v: for format 1
// the IV column followed by wrapped_mk (the local AES-GCM layout
// nonce‖ciphertext‖tag), for format 2 wrapped_mk alone.
func decodeStoredWrap(v *Vault) ([]byte, error) {
	wrapped, err := base64.StdEncoding.DecodeString(*v.WrappedMK)
	if err != nil {
		return nil, fmt.Errorf("wrapped_mk is not base64: %w", err)
	}
	if v.FormatVersion != FormatLegacy {
		return wrapped, nil
	}
	if v.WrapIV == nil {
		return nil, errors.New("wrap_iv is missing")
	}
	iv, err := base64.StdEncoding.DecodeString(*v.WrapIV)
	if err != nil {
		return nil, fmt.Errorf("wrap_iv is not base64: %w", err)
	}
	if len(iv) != LegacyIVSize {
		return nil, fmt.Errorf("wrap_iv is %d bytes, want %d", len(iv), LegacyIVSize)
	}
	return append(iv, wrapped...), nil
}

// encodeBoundWrap stores a format-2 wrap in v.
func encodeBoundWrap(v *Vault, wrapped []byte, kekID string) {
	enc := base64.StdEncoding.EncodeToString(wrapped)
	empty := ""
	v.WrappedMK = &enc
	v.WrapIV = &empty
	v.FormatVersion = FormatBound
	v.KEKID = kekID
}

func equalConstantTime(a, b []byte) bool { return subtle.ConstantTimeCompare(a, b) == 1 }

// wipe zeroes key material we are done with. Best effort: the garbage
// collector may have copied it, but the copy we hold no longer lingers.
func wipe(b []byte) {
	for i := range b {
		b[i] = 0
	}
}

const auditIDAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"

// auditIDTime are the digits of an audit id's time: base 32 in characters
// that sort in this order under every collation (digits before lowercase
// letters, no case to fold).
const auditIDTime = "0123456789abcdefghijklmnopqrstuv"

// newAuditID returns a 21-character URL-safe id, the shape of the nanoid
// ids the original service wrote, that sorts by time: its first 10
// characters are the milliseconds since 1970 of at (base 32, 50 bits), the
// 11 after them random (66 bits). Each row's id is then near the last
// one's in the audit table's primary key index, which grows at its right
// edge the way the created_at index does: with random ids every insert
// touched a random page of an index that, at a day's five million rows,
// no longer stays in PostgreSQL's buffers (make bench-scale).
func newAuditID(at time.Time) string {
	var raw [21]byte
	ms := uint64(max(at.UnixMilli(), 0))
	for i := 9; i >= 0; i-- {
		raw[i] = auditIDTime[ms&31]
		ms >>= 5
	}
	rand.Read(raw[10:])
	for i := 10; i < len(raw); i++ {
		raw[i] = auditIDAlphabet[raw[i]&63]
	}
	return string(raw[:])
}
