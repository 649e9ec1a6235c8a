// Package kek is the contract between keybroker's domain and its KEK
// providers: the KEK interface and its optional abilities, the error
// classes a provider reports with Classify to tell them apart, the keys
// of the binding context a wrap is bound to, the names of the calls an
// observer (metrics) is told about, and Check, the probe of one KEK.
//
// It imports the standard library only, so that the domain (broker) and
// every provider (kekproviders/…) can import it without importing each
// other.
package kek

import (
	"context"
	"time"
)

// KEK is a key-encryption key: a provider that reports its id and wraps
// and unwraps bytes bound to a binding context. An empty or nil binding
// means "no AAD" (the original service's format).
type KEK interface {
	// ID is the stable id recorded on every row this KEK wraps.
	ID() string
	// Wrap encrypts plaintext bound to binding. Errors are classified
	// (see Classify).
	Wrap(ctx context.Context, plaintext []byte, binding map[string]string) ([]byte, error)
	// Unwrap decrypts ciphertext; it fails with ErrInvalidCiphertext
	// when binding differs from the one used to wrap, or the ciphertext
	// is not this key's.
	Unwrap(ctx context.Context, ciphertext []byte, binding map[string]string) ([]byte, error)
}

// The optional abilities of a KEK, each found by type assertion. A
// provider asserts every one it claims at compile time.
type (
	// StatusChecker is a cheap probe a readiness check can poll: it reads
	// the key's metadata (DescribeKey, GetCryptoKey, the transit key)
	// without paying for an encrypt or decrypt, and reports a key that
	// exists but cannot be used (disabled, wrong purpose) as denied.
	StatusChecker interface {
		Status(ctx context.Context) error
	}

	// Rewrapper re-encrypts a wrap under the key's newest version
	// without the plaintext leaving the backend (Vault Transit rewrap).
	// The binding and the KEK id stay the same. The re-wrap job uses it
	// together with Versioner.
	Rewrapper interface {
		Rewrap(ctx context.Context, ciphertext []byte, binding map[string]string) ([]byte, error)
	}

	// Versioner is a KEK whose ciphertexts record the version of the
	// backend key that made them (Vault Transit's vault:vN:), so that the
	// wraps made by an older version can be found.
	Versioner interface {
		// KeyVersion returns the key version that made ciphertext, or
		// ErrInvalidCiphertext when ciphertext names none. It makes no
		// call.
		KeyVersion(ciphertext []byte) (int, error)
		// LatestVersion returns the backend key's newest version, which
		// new wraps use.
		LatestVersion(ctx context.Context) (int, error)
	}

	// LocalUnwrapper is a KEK whose Unwrap makes no network call when
	// Local reports true, so it fails only for a wrap that does not
	// authenticate. The fetch path records such a fetch in the commit of
	// its read.
	LocalUnwrapper interface {
		Local() bool
	}

	// Destroyer is a KEK that holds key material in memory: Destroy
	// zeroes it, after the calls in flight, and every later call fails.
	// It reports whether the memory was overwritten rather than only
	// dropped. The keyring destroys a data key's local KEK once the data
	// key is no longer loaded.
	Destroyer interface {
		Destroy() bool
	}
)

// Keys of the binding contexts keybroker wraps under. A user master key's
// wrap is bound to {user_id, kek_id, format}; a data key's wrap (cached
// envelope mode) to {purpose, data_key_id, kek_id}. Local providers encode
// the map canonically as AES-GCM AAD; AWS KMS sends it as the
// EncryptionContext, where IAM policies name these keys.
const (
	BindingUserID    = "user_id"
	BindingKEKID     = "kek_id"
	BindingFormat    = "format"
	BindingPurpose   = "purpose"
	BindingDataKeyID = "data_key_id"
)

// Operations named in a Call: the KEK's methods as metrics label them.
const (
	OpWrap          = "wrap"
	OpUnwrap        = "unwrap"
	OpStatus        = "status"
	OpRewrap        = "rewrap"
	OpLatestVersion = "latest_version"
)

// Call is one call made to a KEK, as an observer (the KEK metrics) is
// told about it: which KEK, which operation, how long it took and how it
// failed (Classify(Err) names the outcome).
type Call struct {
	KEKID string
	Op    string
	Took  time.Duration
	Err   error
}
