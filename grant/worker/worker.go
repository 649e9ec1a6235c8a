// Package worker is the background worker's side of mission grants: it
// parses a grant the server issued (ParseGrant), refuses one that expired
// or that it does not understand, opens it with the worker's private key
// (Worker.Open) and decrypts the records a browser encrypted with the
// mission data key (MissionKey.Decrypt) — only those the grant lists,
// only until it expires.
//
// A worker holds no master key and derives nothing: the mission data key
// arrives wrapped, and the package offers no way to derive another. Keys
// are zeroed when done with where Go allows (MissionKey.Close,
// Worker.Close): the standard library keeps copies it does not expose
// (an AES key schedule, an RSA key's precomputed values, an HPKE key),
// which the garbage collector reclaims but nothing overwrites.
//
// Like package grant it uses the standard library only.
package worker

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"sync"
	"time"

	"github.com/keybroker/keybroker/grant"
)

// Errors of opening a grant and decrypting a record.
var (
	// ErrExpired: the grant's expiresAt has passed.
	ErrExpired = errors.New("worker: the grant has expired")
	// ErrNotYetValid: the grant's issuedAt is further in the future than
	// the tolerated clock skew.
	ErrNotYetValid = errors.New("worker: the grant is issued in the future")
	// ErrUnknownVersion: the grant's derivation version is not the one
	// this package knows (grant.Version).
	ErrUnknownVersion = errors.New("worker: unknown grant version")
	// ErrWrongRecipient: the grant is for another recipient, or wrapped
	// with another algorithm than this worker's key.
	ErrWrongRecipient = errors.New("worker: the grant is not for this worker")
	// ErrOutOfScope: the record is not one the grant lists.
	ErrOutOfScope = errors.New("worker: the record is outside the grant's scope")
	// ErrClosed: the key was closed.
	ErrClosed = errors.New("worker: the mission key is closed")
)

// Grant is a mission grant as the server's response carries it.
type Grant struct {
	// WrappedKey is the mission data key wrapped to the recipient.
	WrappedKey []byte
	Derivation grant.Derivation
	IssuedAt   time.Time
	ExpiresAt  time.Time
	// Recipient and Algorithm are set for a grant to a named recipient,
	// whose wrap is bound to its terms; both are empty for the
	// upstream's grant (RSA-OAEP to the default recipient, unbound).
	Recipient string
	Algorithm grant.Algorithm
}

// Terms are the grant's terms, which a bound wrap is bound to.
func (g *Grant) Terms() grant.Terms {
	return grant.Terms{Derivation: g.Derivation, IssuedAt: g.IssuedAt, ExpiresAt: g.ExpiresAt}
}

// grantJSON is the response of POST /api/v1/me/ai-mission-grant.
type grantJSON struct {
	WrappedKey *string `json:"wrappedKey"`
	Derivation *struct {
		Version   string   `json:"version"`
		MissionID string   `json:"missionId"`
		Tables    []string `json:"tables"`
		RecordIDs []string `json:"recordIds"`
	} `json:"derivation"`
	IssuedAt  *string `json:"issuedAt"`
	ExpiresAt *string `json:"expiresAt"`
	Recipient *string `json:"recipient"`
	Algorithm *string `json:"algorithm"`
}

// MaxGrantBytes bounds the JSON ParseGrant reads: a grant of 1 000 record
// ids of the longest kind, with an X-Wing wrap.
const MaxGrantBytes = 1 << 20

// ParseGrant reads a grant: the JSON body of the server's response (or
// the same object stored by whoever forwarded it). It refuses unknown
// fields, an unknown version (ErrUnknownVersion), a derivation that is not
// canonical (lists out of order, or a scope the grant contract refuses),
// times that are not ISO 8601 or that end before they start, and a
// recipient without its algorithm or the reverse. It does not check the
// time: Worker.Open does.
func ParseGrant(data []byte) (*Grant, error) {
	if len(data) > MaxGrantBytes {
		return nil, fmt.Errorf("worker: a grant of %d bytes; at most %d", len(data), MaxGrantBytes)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	var raw grantJSON
	if err := dec.Decode(&raw); err != nil {
		return nil, fmt.Errorf("worker: not a grant: %w", err)
	}
	if dec.More() {
		return nil, errors.New("worker: not a grant: data after the JSON object")
	}
	if raw.WrappedKey == nil || raw.Derivation == nil || raw.IssuedAt == nil || raw.ExpiresAt == nil {
		return nil, errors.New("worker: not a grant: wrappedKey, derivation, issuedAt and expiresAt are required")
	}
	if raw.Derivation.Version != grant.Version {
		return nil, fmt.Errorf("%w %q: this worker knows %q", ErrUnknownVersion, raw.Derivation.Version, grant.Version)
	}
	g := &Grant{Derivation: grant.Derivation{
		Version: raw.Derivation.Version, MissionID: raw.Derivation.MissionID,
		Tables: raw.Derivation.Tables, RecordIDs: raw.Derivation.RecordIDs,
	}}
	if err := g.Derivation.Canonical(); err != nil {
		return nil, fmt.Errorf("worker: the grant's derivation: %w", err)
	}
	var err error
	if g.WrappedKey, err = base64.StdEncoding.DecodeString(*raw.WrappedKey); err != nil || len(g.WrappedKey) == 0 {
		return nil, errors.New("worker: wrappedKey is not base64")
	}
	if g.IssuedAt, err = time.Parse(time.RFC3339Nano, *raw.IssuedAt); err != nil {
		return nil, fmt.Errorf("worker: issuedAt: %w", err)
	}
	if g.ExpiresAt, err = time.Parse(time.RFC3339Nano, *raw.ExpiresAt); err != nil {
		return nil, fmt.Errorf("worker: expiresAt: %w", err)
	}
	if !g.ExpiresAt.After(g.IssuedAt) {
		return nil, errors.New("worker: the grant expires before it is issued")
	}
	switch {
	case raw.Recipient == nil && raw.Algorithm == nil:
	case raw.Recipient != nil && raw.Algorithm != nil:
		if err := grant.CheckRecipientName(*raw.Recipient); err != nil {
			return nil, fmt.Errorf("worker: %w", err)
		}
		g.Recipient, g.Algorithm = *raw.Recipient, grant.Algorithm(*raw.Algorithm)
		if !knownAlgorithm(g.Algorithm) {
			return nil, fmt.Errorf("worker: unknown algorithm %q", g.Algorithm)
		}
	default:
		return nil, errors.New("worker: a grant names both its recipient and its algorithm, or neither")
	}
	return g, nil
}

func knownAlgorithm(a grant.Algorithm) bool {
	for _, known := range grant.Algorithms() {
		if a == known {
			return true
		}
	}
	return false
}

// Config configures a Worker.
type Config struct {
	// Name is the worker's recipient name, as the server's
	// KEYBROKER_GRANT_RECIPIENTS names it; grants to another recipient
	// are refused. Empty or grant.DefaultRecipient: the worker is the
	// default recipient (MANA_AI_PUBLIC_KEY_PEM), which also opens the
	// upstream's unbound grants.
	Name string
	// PrivateKeyPEM is the worker's private key (grant.ParsePrivateKey's
	// forms). The Worker wipes this slice once parsed.
	PrivateKeyPEM []byte
	// PrivateKeyFile is a file holding it instead: readable by its owner
	// only (a file with any group or other permission is refused).
	PrivateKeyFile string
	// Now is the clock; default time.Now.
	Now func() time.Time
	// ClockSkew is how far in the future a grant's issuedAt may be (the
	// server's clock ahead of the worker's). Default one minute.
	ClockSkew time.Duration
}

// Worker opens the grants issued to one recipient. It is safe for
// concurrent use.
type Worker struct {
	name string
	now  func() time.Time
	skew time.Duration

	mu  sync.RWMutex
	key *grant.PrivateKey // nil once closed
}

// New returns a Worker with its private key loaded.
func New(cfg Config) (*Worker, error) {
	if (cfg.PrivateKeyPEM == nil) == (cfg.PrivateKeyFile == "") {
		return nil, errors.New("worker: Config needs PrivateKeyPEM or PrivateKeyFile, not both")
	}
	name := cfg.Name
	if name == "" {
		name = grant.DefaultRecipient
	}
	if err := grant.CheckRecipientName(name); err != nil {
		return nil, fmt.Errorf("worker: Config.Name: %w", err)
	}
	pemData := cfg.PrivateKeyPEM
	if cfg.PrivateKeyFile != "" {
		var err error
		if pemData, err = readPrivateFile(cfg.PrivateKeyFile); err != nil {
			return nil, err
		}
	}
	key, err := grant.ParsePrivateKey(pemData)
	clear(pemData)
	if err != nil {
		return nil, fmt.Errorf("worker: %w", err)
	}
	w := &Worker{name: name, now: cfg.Now, skew: cfg.ClockSkew, key: key}
	if w.now == nil {
		w.now = time.Now
	}
	if w.skew == 0 {
		w.skew = time.Minute
	}
	if w.skew < 0 {
		return nil, errors.New("worker: Config.ClockSkew must not be negative")
	}
	return w, nil
}

// readPrivateFile reads a private key file, refusing one that its group
// or others may read or write.
func readPrivateFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("worker: private key: %w", err)
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("worker: private key: %w", err)
	}
	if runtime.GOOS != "windows" && info.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("worker: private key %s has mode %s: group and others must have no access; run: chmod 600 %s", path, info.Mode().Perm(), path)
	}
	if !info.Mode().IsRegular() {
		return nil, fmt.Errorf("worker: private key %s is not a regular file", path)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxKeyFileBytes+1))
	if err != nil {
		clear(data)
		return nil, fmt.Errorf("worker: private key: %w", err)
	}
	if len(data) > maxKeyFileBytes {
		clear(data)
		return nil, fmt.Errorf("worker: private key %s is over %d bytes: not a key", path, maxKeyFileBytes)
	}
	return data, nil
}

// maxKeyFileBytes bounds a private key file: an RSA key of 16 384 bits
// is some 13 KB of PEM.
const maxKeyFileBytes = 64 << 10

// Name is the recipient name the worker opens grants for.
func (w *Worker) Name() string { return w.name }

// Open checks g — its version (ParseGrant did), its lifetime against the
// worker's clock, its recipient and algorithm against this worker — and
// unwraps its mission data key: a bound wrap under g's own terms, so that
// a grant whose scope, lifetime or recipient was altered after the server
// issued it does not open. It returns ErrExpired, ErrNotYetValid,
// ErrWrongRecipient, grant.ErrUnwrap for a wrap that does not open, or
// ErrClosed.
func (w *Worker) Open(g *Grant) (*MissionKey, error) {
	if g.Derivation.Version != grant.Version {
		return nil, fmt.Errorf("%w %q", ErrUnknownVersion, g.Derivation.Version)
	}
	now := w.now()
	if !now.Before(g.ExpiresAt) {
		return nil, fmt.Errorf("%w (at %s)", ErrExpired, g.ExpiresAt.UTC().Format(time.RFC3339))
	}
	if g.IssuedAt.After(now.Add(w.skew)) {
		return nil, fmt.Errorf("%w (at %s)", ErrNotYetValid, g.IssuedAt.UTC().Format(time.RFC3339))
	}
	w.mu.RLock()
	defer w.mu.RUnlock()
	if w.key == nil {
		return nil, ErrClosed
	}
	var mdk []byte
	var err error
	switch {
	case g.Recipient == "":
		// The upstream's grant: to the default recipient, unbound.
		if w.name != grant.DefaultRecipient {
			return nil, fmt.Errorf("%w: an upstream grant is for the default recipient, this worker is %s", ErrWrongRecipient, w.name)
		}
		mdk, err = w.key.UnwrapUnbound(g.WrappedKey)
	case g.Recipient != w.name:
		return nil, fmt.Errorf("%w: the grant is for %s, this worker is %s", ErrWrongRecipient, g.Recipient, w.name)
	case g.Algorithm != w.key.Algorithm():
		return nil, fmt.Errorf("%w: the grant is wrapped with %s, this worker's key is %s", ErrWrongRecipient, g.Algorithm, w.key.Algorithm())
	default:
		mdk, err = w.key.Unwrap(g.WrappedKey, g.Recipient, g.Terms())
	}
	if err != nil {
		return nil, err
	}
	return &MissionKey{key: mdk, derivation: g.Derivation, expiresAt: g.ExpiresAt, now: w.now}, nil
}

// Close destroys the worker's private key as far as Go allows; Open
// fails with ErrClosed afterwards.
func (w *Worker) Close() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.key != nil {
		w.key.Destroy()
		w.key = nil
	}
}

// IVSize is the AES-GCM nonce length of a record: WebCrypto's
// recommended 12 bytes, the only one accepted.
const IVSize = 12

// MissionKey is an opened grant: the mission data key with the scope and
// lifetime it was granted for. It is safe for concurrent use.
type MissionKey struct {
	derivation grant.Derivation
	expiresAt  time.Time
	now        func() time.Time

	mu  sync.RWMutex
	key []byte // nil once closed
}

// Derivation is the scope the key was granted for.
func (k *MissionKey) Derivation() grant.Derivation { return k.derivation }

// ExpiresAt is when the grant ends.
func (k *MissionKey) ExpiresAt() time.Time { return k.expiresAt }

// Decrypt opens a record a browser encrypted with the mission data key
// as a WebCrypto AES-GCM key: crypto.subtle.encrypt({name: "AES-GCM",
// iv, additionalData}, key, plaintext), which yields the ciphertext with
// the 16-byte tag appended; additionalData is nil when the browser gave
// none. recordID must be one the grant lists (ErrOutOfScope) and the
// grant must not have expired (ErrExpired); the key is not used
// otherwise. A record that does not authenticate is an error, never
// partial plaintext.
func (k *MissionKey) Decrypt(recordID string, iv, ciphertext, additionalData []byte) ([]byte, error) {
	if !k.now().Before(k.expiresAt) {
		return nil, ErrExpired
	}
	if !k.derivation.Covers(recordID) {
		return nil, fmt.Errorf("%w: %q", ErrOutOfScope, recordID)
	}
	if len(iv) != IVSize {
		return nil, fmt.Errorf("worker: the record's IV is %d bytes; want %d", len(iv), IVSize)
	}
	k.mu.RLock()
	defer k.mu.RUnlock()
	if k.key == nil {
		return nil, ErrClosed
	}
	block, err := aes.NewCipher(k.key)
	if err != nil {
		return nil, fmt.Errorf("worker: %w", err)
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("worker: %w", err)
	}
	plaintext, err := gcm.Open(nil, iv, ciphertext, additionalData)
	if err != nil {
		return nil, fmt.Errorf("worker: record %q does not open under the mission key", recordID)
	}
	return plaintext, nil
}

// Close zeroes the mission data key; Decrypt fails with ErrClosed
// afterwards.
func (k *MissionKey) Close() {
	k.mu.Lock()
	defer k.mu.Unlock()
	clear(k.key)
	k.key = nil
}
