package kekproviders

import "context"

// KEK is what every provider returns: the method set of broker.KEK.
// Providers must not import broker, so the interface is repeated here
// with the same methods; any KEK is a broker.KEK.
type KEK interface {
	// ID is the stable id recorded on every row this KEK wraps.
	ID() string
	// Wrap encrypts plaintext bound to binding.
	Wrap(ctx context.Context, plaintext []byte, binding map[string]string) ([]byte, error)
	// Unwrap decrypts ciphertext; it fails when binding differs from the
	// one used to wrap.
	Unwrap(ctx context.Context, ciphertext []byte, binding map[string]string) ([]byte, error)
}

// StatusChecker is implemented by every provider in this module. Status
// is a cheap probe a readiness check can poll: it reads the key's
// metadata (DescribeKey, GetCryptoKey, the transit key) without paying
// for an encrypt or decrypt, and reports a key that exists but cannot be
// used (disabled, wrong purpose) as an error. Errors are classified like
// those of Wrap and Unwrap (see package kekerr).
type StatusChecker interface {
	Status(ctx context.Context) error
}

// Rewrapper is implemented by providers whose backend can re-encrypt a
// wrap under the key's newest version without the plaintext ever leaving
// it (Vault Transit rewrap, AWS KMS ReEncrypt). The binding and the KEK id
// stay the same; only the backend's key version moves forward. A rotation
// job finds it by type assertion.
type Rewrapper interface {
	Rewrap(ctx context.Context, ciphertext []byte, binding map[string]string) ([]byte, error)
}
