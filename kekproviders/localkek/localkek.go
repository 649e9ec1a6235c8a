// Package localkek is a KEK held in process memory: AES-256-GCM with a
// random 96-bit nonce. The env, file, systemd and docker providers load
// the key and hand it here.
//
// Ciphertext layout: nonce (12 bytes) ‖ ciphertext ‖ tag (16 bytes). With
// an empty binding this is exactly the original service's format 1 with
// the IV column prepended.
package localkek

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/keybroker/keybroker/kek"
	"github.com/keybroker/keybroker/kekproviders/internal/binding"
)

// KeySize is the length of a KEK in bytes.
const KeySize = 32

const nonceSize = 12

// ErrDevKey refuses the all-zero key the original service fell back to.
var ErrDevKey = errors.New("the KEK is 32 zero bytes (the original service's dev fallback)")

// ErrDestroyed is returned by every call on a KEK after Destroy.
var ErrDestroyed = errors.New("the key was destroyed")

// The abilities a local KEK claims.
var (
	_ kek.KEK            = (*KEK)(nil)
	_ kek.StatusChecker  = (*KEK)(nil)
	_ kek.LocalUnwrapper = (*KEK)(nil)
	_ kek.Destroyer      = (*KEK)(nil)
)

// KEK is an AES-256-GCM key-encryption key.
type KEK struct {
	id string
	// mu lets Destroy wait for calls in flight: a call holds it shared,
	// so no wrap is ever made under a key being zeroed.
	mu sync.RWMutex
	// block and aead hold the AES key schedule, the key itself in its
	// first round keys; nil once destroyed.
	block cipher.Block
	aead  cipher.AEAD
}

// New returns a KEK with the given id over key, which must be 32 bytes.
// The all-zero key is refused with ErrDevKey unless allowDevKey is set.
func New(id string, key []byte, allowDevKey bool) (*KEK, error) {
	if len(key) != KeySize {
		return nil, fmt.Errorf("localkek: key is %d bytes, want %d", len(key), KeySize)
	}
	if !allowDevKey && isZero(key) {
		return nil, ErrDevKey
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("localkek: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("localkek: %w", err)
	}
	return &KEK{id: id, block: block, aead: aead}, nil
}

// ParseKey reads a KEK from secret material: exactly 32 raw bytes, or
// base64 (standard or URL alphabet, padded or not) of 32 bytes with
// surrounding whitespace ignored.
func ParseKey(material []byte) ([]byte, error) {
	if len(material) == KeySize {
		return append([]byte(nil), material...), nil
	}
	text := strings.TrimSpace(string(material))
	if text == "" {
		return nil, errors.New("the KEK is empty")
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if key, err := enc.DecodeString(text); err == nil {
			if len(key) != KeySize {
				return nil, fmt.Errorf("the KEK decodes to %d bytes, want %d", len(key), KeySize)
			}
			return key, nil
		}
	}
	return nil, fmt.Errorf("the KEK is neither %d raw bytes nor base64 of %d bytes", KeySize, KeySize)
}

// ID returns the KEK id.
func (k *KEK) ID() string { return k.id }

// Wrap encrypts plaintext bound to b. It fails only when ctx is done or
// the KEK was destroyed (ErrDestroyed, as a kek.DeniedError).
func (k *KEK) Wrap(ctx context.Context, plaintext []byte, b map[string]string) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	k.mu.RLock()
	defer k.mu.RUnlock()
	if k.aead == nil {
		return nil, kek.Denied(fmt.Errorf("localkek %s: %w", k.id, ErrDestroyed))
	}
	out := make([]byte, nonceSize, nonceSize+len(plaintext)+k.aead.Overhead())
	rand.Read(out)
	return k.aead.Seal(out, out[:nonceSize], plaintext, binding.AAD(b)), nil
}

// Unwrap decrypts ciphertext made by Wrap with the same binding. A
// ciphertext that does not open (corrupt, another key, another binding)
// is reported as kek.ErrInvalidCiphertext; a done ctx as its error; a
// destroyed KEK as ErrDestroyed (a kek.DeniedError).
func (k *KEK) Unwrap(ctx context.Context, ciphertext []byte, b map[string]string) ([]byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	k.mu.RLock()
	defer k.mu.RUnlock()
	if k.aead == nil {
		return nil, kek.Denied(fmt.Errorf("localkek %s: %w", k.id, ErrDestroyed))
	}
	if len(ciphertext) < nonceSize+k.aead.Overhead() {
		return nil, fmt.Errorf("localkek: %w: %d bytes is too short", kek.ErrInvalidCiphertext, len(ciphertext))
	}
	pt, err := k.aead.Open(nil, ciphertext[:nonceSize], ciphertext[nonceSize:], binding.AAD(b))
	if err != nil {
		return nil, fmt.Errorf("localkek: %w: %v", kek.ErrInvalidCiphertext, err)
	}
	return pt, nil
}

// Local reports that Unwrap makes no network call (kek.LocalUnwrapper).
func (k *KEK) Local() bool { return true }

// Status reports whether the KEK can be used: a local key can until it
// is destroyed.
func (k *KEK) Status(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	k.mu.RLock()
	defer k.mu.RUnlock()
	if k.aead == nil {
		return kek.Denied(fmt.Errorf("localkek %s: %w", k.id, ErrDestroyed))
	}
	return nil
}

// Destroy zeroes the key: it waits for the calls in flight, overwrites
// the AES key schedule and the GCM state this KEK holds (the key bytes
// New was given are the caller's to wipe), and makes every later call fail
// with ErrDestroyed. It reports whether the memory was overwritten; false
// only where the standard library's cipher state is not plain memory
// (never on amd64 or arm64), and then the state is merely dropped.
// Destroying twice does nothing more.
func (k *KEK) Destroy() bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.aead == nil {
		return true
	}
	zeroed := zeroPointee(k.aead) && zeroPointee(k.block)
	k.aead, k.block = nil, nil
	return zeroed
}

func isZero(b []byte) bool {
	var acc byte
	for _, c := range b {
		acc |= c
	}
	return acc == 0
}
