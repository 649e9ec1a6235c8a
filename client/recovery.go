package client

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
)

// The browser's recovery wrap, which these functions reproduce byte for
// byte: a 32-byte random secret, shown to the user as a recovery code;
// HKDF-SHA256 over the secret with an empty salt and info
// "mana-recovery-v1" gives a 32-byte AES-256-GCM key; the master key is
// sealed under it with a random 12-byte IV, tag appended, no AAD. The
// server stores the sealed key and the IV and never sees the secret.
const (
	// RecoverySecretSize is the length in bytes of a recovery secret.
	RecoverySecretSize = 32
	// RecoveryIVSize is the length in bytes of a recovery wrap's IV.
	RecoveryIVSize = 12
	// RecoveryWrapSize is the length in bytes of a recovery-wrapped master
	// key: the 32-byte key and the 16-byte GCM tag.
	RecoveryWrapSize = MasterKeySize + 16
	// MasterKeySize is the length in bytes of a master key.
	MasterKeySize = 32

	recoveryInfo    = "mana-recovery-v1"
	recoveryKeySize = 32
	// A recovery code is the secret in hex, in groups of four digits.
	recoveryGroupSize = 4
)

// ErrNotZeroKnowledge is returned by ReplaceRecoveryCode for a vault in
// standard mode.
var ErrNotZeroKnowledge = errors.New("client: the vault is not in zero-knowledge mode")

// keyProofLabel is the fixed message of the key possession proof.
const keyProofLabel = "keybroker key possession proof v1"

// KeyProofSize is the length in bytes of a key possession proof.
const KeyProofSize = 32

// KeyProof returns the key possession proof of the master key mk:
// HMAC-SHA256 with mk as the key over the ASCII label
// "keybroker key possession proof v1", 32 bytes. keybroker wants it, in
// base64 as keyProof, to replace the recovery wrap of a zero-knowledge
// vault: it shows that the caller holds the key without sending it. In
// the browser: crypto.subtle.importKey("raw", mk, {name: "HMAC", hash:
// "SHA-256"}, false, ["sign"]) and crypto.subtle.sign("HMAC", key, label).
func KeyProof(mk []byte) []byte {
	mac := hmac.New(sha256.New, mk)
	mac.Write([]byte(keyProofLabel))
	return mac.Sum(nil)
}

// ErrWrongRecoveryCode means a recovery wrap did not open with the given
// code: the code is wrong, or the wrap was made for another code.
var ErrWrongRecoveryCode = errors.New("client: the recovery code does not open this recovery wrap")

// NewRecoveryCode returns a fresh random recovery secret and the code the
// user writes down: its 64 hex digits in upper case, as 16 groups of 4
// separated by dashes ("1D38-2010-…-8FD9").
func NewRecoveryCode() (secret []byte, code string) {
	secret = make([]byte, RecoverySecretSize)
	_, _ = rand.Read(secret) // crypto/rand.Read never fails
	return secret, formatRecoveryCode(secret)
}

func formatRecoveryCode(secret []byte) string {
	digits := strings.ToUpper(hex.EncodeToString(secret))
	var b strings.Builder
	for i := 0; i < len(digits); i += recoveryGroupSize {
		if i > 0 {
			b.WriteByte('-')
		}
		b.WriteString(digits[i:min(i+recoveryGroupSize, len(digits))])
	}
	return b.String()
}

// ParseRecoveryCode returns the secret of a recovery code. It tolerates
// what people do when they copy a code: lower case, and spaces, dashes,
// tabs or line breaks anywhere. What remains must be exactly 64 hex
// digits. The error never repeats the code.
func ParseRecoveryCode(code string) ([]byte, error) {
	digits := make([]byte, 0, 2*RecoverySecretSize)
	for i, r := range code {
		switch {
		case r == '-' || r == ' ' || r == '\t' || r == '\n' || r == '\r':
			continue
		case '0' <= r && r <= '9', 'a' <= r && r <= 'f', 'A' <= r && r <= 'F':
			digits = append(digits, byte(r))
		default:
			return nil, fmt.Errorf("client: recovery code: the character at position %d is not a hexadecimal digit, dash or space", i+1)
		}
	}
	if len(digits) != 2*RecoverySecretSize {
		return nil, fmt.Errorf("client: recovery code: it has %d hexadecimal digits, want %d (16 groups of 4)", len(digits), 2*RecoverySecretSize)
	}
	secret := make([]byte, RecoverySecretSize)
	if _, err := hex.Decode(secret, digits); err != nil {
		return nil, errors.New("client: recovery code: not hexadecimal") // unreachable: digits were checked
	}
	clear(digits)
	return secret, nil
}

// DeriveRecoveryKey returns the AES-256-GCM key of a recovery secret:
// HKDF-SHA256 with an empty salt and info "mana-recovery-v1", 32 bytes,
// as WebCrypto derives it in the browser.
func DeriveRecoveryKey(secret []byte) []byte {
	key, err := hkdf.Key(sha256.New, secret, nil, recoveryInfo, recoveryKeySize)
	if err != nil {
		// Only an output longer than 255 hash lengths fails; 32 bytes cannot.
		panic("client: hkdf: " + err.Error())
	}
	return key
}

func recoveryAEAD(secret []byte) (cipher.AEAD, error) {
	if len(secret) != RecoverySecretSize {
		return nil, fmt.Errorf("client: a recovery secret is %d bytes, got %d", RecoverySecretSize, len(secret))
	}
	key := DeriveRecoveryKey(secret)
	defer clear(key)
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	return aead, nil
}

// WrapWithRecovery seals the master key mk under the recovery secret, as
// the browser does: AES-256-GCM with the derived key, a random 12-byte
// IV, the tag appended to wrappedMK. Send both with SetRecoveryWrap.
func WrapWithRecovery(mk, secret []byte) (wrappedMK, iv []byte, err error) {
	if len(mk) != MasterKeySize {
		return nil, nil, fmt.Errorf("client: a master key is %d bytes, got %d", MasterKeySize, len(mk))
	}
	aead, err := recoveryAEAD(secret)
	if err != nil {
		return nil, nil, err
	}
	iv = make([]byte, RecoveryIVSize)
	_, _ = rand.Read(iv)
	return aead.Seal(nil, iv, mk, nil), iv, nil
}

// UnwrapWithRecovery opens a recovery wrap with the recovery secret and
// returns the master key. It returns ErrWrongRecoveryCode when the wrap
// does not open with this secret.
func UnwrapWithRecovery(wrappedMK, iv, secret []byte) (mk []byte, err error) {
	if len(iv) != RecoveryIVSize {
		return nil, fmt.Errorf("client: a recovery IV is %d bytes, got %d", RecoveryIVSize, len(iv))
	}
	if len(wrappedMK) != RecoveryWrapSize {
		return nil, fmt.Errorf("client: a recovery-wrapped master key is %d bytes, got %d", RecoveryWrapSize, len(wrappedMK))
	}
	aead, err := recoveryAEAD(secret)
	if err != nil {
		return nil, err
	}
	mk, err = aead.Open(nil, iv, wrappedMK, nil)
	if err != nil {
		return nil, ErrWrongRecoveryCode
	}
	return mk, nil
}
