package grant

import (
	"crypto/ecdh"
	"crypto/hpke"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
)

// PrivateKey is a worker's private key: the half of a recipient that
// opens its grants.
type PrivateKey struct {
	alg  Algorithm
	rsa  *rsa.PrivateKey
	hpke hpke.PrivateKey
}

// GeneratedRSABits is the modulus size GenerateKey makes.
const GeneratedRSABits = 3072

// GenerateKey makes a fresh private key for alg.
func GenerateKey(alg Algorithm) (*PrivateKey, error) {
	if alg == RSAOAEP256 {
		k, err := rsa.GenerateKey(rand.Reader, GeneratedRSABits)
		if err != nil {
			return nil, fmt.Errorf("grant: %w", err)
		}
		return &PrivateKey{alg: alg, rsa: k}, nil
	}
	kem, ok := alg.kem()
	if !ok {
		return nil, fmt.Errorf("grant: unknown algorithm %q", alg)
	}
	k, err := kem.GenerateKey()
	if err != nil {
		return nil, fmt.Errorf("grant: %w", err)
	}
	return &PrivateKey{alg: alg, hpke: k}, nil
}

// ParsePrivateKey reads a worker's private key from one PEM block:
// "PRIVATE KEY" (PKCS#8) of an RSA or X25519 key, "RSA PRIVATE KEY"
// (PKCS#1), or PEMTypeXWingPrivateKey (the 32-byte seed). The caller may
// wipe pemData afterwards; the key keeps no reference to it.
func ParsePrivateKey(pemData []byte) (*PrivateKey, error) {
	block, err := onePEMBlock(pemData)
	if err != nil {
		return nil, fmt.Errorf("grant: private key: %w", err)
	}
	defer clear(block.Bytes)
	switch block.Type {
	case "PRIVATE KEY":
		key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("grant: private key: not PKCS#8: %w", err)
		}
		switch key := key.(type) {
		case *rsa.PrivateKey:
			return newRSAPrivateKey(key)
		case *ecdh.PrivateKey:
			if key.Curve() != ecdh.X25519() {
				return nil, errors.New("grant: private key: an ECDH key that is not X25519")
			}
			k, err := hpke.NewDHKEMPrivateKey(key)
			if err != nil {
				return nil, fmt.Errorf("grant: private key: %w", err)
			}
			return &PrivateKey{alg: HPKEX25519, hpke: k}, nil
		default:
			return nil, fmt.Errorf("grant: private key: a %T key; use RSA, X25519 or %s", key, PEMTypeXWingPrivateKey)
		}
	case "RSA PRIVATE KEY":
		key, err := x509.ParsePKCS1PrivateKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("grant: private key: not PKCS#1: %w", err)
		}
		return newRSAPrivateKey(key)
	case PEMTypeXWingPrivateKey:
		kem, _ := HPKEMLKEM768X25519.kem()
		k, err := kem.NewPrivateKey(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("grant: private key: not an ML-KEM-768 + X25519 seed: %w", err)
		}
		return &PrivateKey{alg: HPKEMLKEM768X25519, hpke: k}, nil
	}
	return nil, fmt.Errorf("grant: private key: a PEM block of type %q; want \"PRIVATE KEY\", \"RSA PRIVATE KEY\" or %q", block.Type, PEMTypeXWingPrivateKey)
}

func newRSAPrivateKey(key *rsa.PrivateKey) (*PrivateKey, error) {
	if key.N.BitLen() < MinRSABits {
		return nil, fmt.Errorf("grant: private key: RSA key of %d bits; at least %d", key.N.BitLen(), MinRSABits)
	}
	return &PrivateKey{alg: RSAOAEP256, rsa: key}, nil
}

// Algorithm is the algorithm of the key.
func (k *PrivateKey) Algorithm() Algorithm { return k.alg }

// Recipient returns the recipient named name whose grants k opens.
func (k *PrivateKey) Recipient(name string) (*Recipient, error) {
	pemData, err := k.PublicPEM()
	if err != nil {
		return nil, err
	}
	return ParseRecipient(name, pemData)
}

// PublicPEM is the public half in the PEM form ParseRecipient reads.
func (k *PrivateKey) PublicPEM() ([]byte, error) {
	switch {
	case k.destroyed():
		return nil, errDestroyed
	case k.rsa != nil:
		der, err := x509.MarshalPKIXPublicKey(&k.rsa.PublicKey)
		if err != nil {
			return nil, fmt.Errorf("grant: %w", err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
	case k.alg == HPKEX25519:
		pub, err := ecdh.X25519().NewPublicKey(k.hpke.PublicKey().Bytes())
		if err != nil {
			return nil, fmt.Errorf("grant: %w", err)
		}
		der, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			return nil, fmt.Errorf("grant: %w", err)
		}
		return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
	default:
		return pem.EncodeToMemory(&pem.Block{Type: PEMTypeXWingPublicKey, Bytes: k.hpke.PublicKey().Bytes()}), nil
	}
}

// MarshalPEM is the private key in the PEM form ParsePrivateKey reads:
// PKCS#8 for RSA and X25519, the seed for X-Wing. The caller wipes it.
func (k *PrivateKey) MarshalPEM() ([]byte, error) {
	var block *pem.Block
	switch {
	case k.destroyed():
		return nil, errDestroyed
	case k.rsa != nil:
		der, err := x509.MarshalPKCS8PrivateKey(k.rsa)
		if err != nil {
			return nil, fmt.Errorf("grant: %w", err)
		}
		block = &pem.Block{Type: "PRIVATE KEY", Bytes: der}
	default:
		raw, err := k.hpke.Bytes()
		if err != nil {
			return nil, fmt.Errorf("grant: %w", err)
		}
		defer clear(raw)
		if k.alg == HPKEX25519 {
			priv, err := ecdh.X25519().NewPrivateKey(raw)
			if err != nil {
				return nil, fmt.Errorf("grant: %w", err)
			}
			der, err := x509.MarshalPKCS8PrivateKey(priv)
			if err != nil {
				return nil, fmt.Errorf("grant: %w", err)
			}
			block = &pem.Block{Type: "PRIVATE KEY", Bytes: der}
		} else {
			block = &pem.Block{Type: PEMTypeXWingPrivateKey, Bytes: raw}
		}
	}
	out := pem.EncodeToMemory(block)
	clear(block.Bytes)
	return out, nil
}

// Unwrap opens a wrap made by Recipient.Wrap for the recipient named
// recipient under the terms t. It returns ErrUnwrap when the wrap is not
// for this key, was altered, or was bound to other terms, recipient or
// algorithm. The caller wipes the key it returns.
func (k *PrivateKey) Unwrap(wrapped []byte, recipient string, t Terms) ([]byte, error) {
	if k.destroyed() {
		return nil, errDestroyed
	}
	info := BindingInfo(k.alg, recipient, t)
	var mdk []byte
	var err error
	if k.rsa != nil {
		mdk, err = rsa.DecryptOAEP(sha256.New(), nil, k.rsa, wrapped, info)
	} else {
		mdk, err = hpke.Open(k.hpke, hpkeKDF(), hpkeAEAD(), info, wrapped)
	}
	return checkUnwrapped(mdk, err)
}

// UnwrapUnbound opens the upstream's unbound RSA-OAEP wrap
// (Recipient.WrapUnbound). An HPKE key has none to open.
func (k *PrivateKey) UnwrapUnbound(wrapped []byte) ([]byte, error) {
	if k.destroyed() {
		return nil, errDestroyed
	}
	if k.rsa == nil {
		return nil, fmt.Errorf("%w: an unbound (upstream) grant is RSA-OAEP, this key is %s", ErrUnwrap, k.alg)
	}
	return checkUnwrapped(rsa.DecryptOAEP(sha256.New(), nil, k.rsa, wrapped, nil))
}

var errDestroyed = errors.New("grant: the private key was destroyed")

func (k *PrivateKey) destroyed() bool { return k.rsa == nil && k.hpke == nil }

func checkUnwrapped(mdk []byte, err error) ([]byte, error) {
	if err != nil {
		return nil, ErrUnwrap
	}
	if len(mdk) != KeySize {
		clear(mdk)
		return nil, fmt.Errorf("%w: it holds %d bytes, not a %d-byte key", ErrUnwrap, len(mdk), KeySize)
	}
	return mdk, nil
}

// Destroy zeroes what the key holds as far as Go allows: the RSA private
// exponent, primes and CRT values (the standard library keeps a
// precomputed copy it does not expose), and drops the HPKE key, whose
// bytes the standard library does not expose for zeroing. k opens
// nothing afterwards.
func (k *PrivateKey) Destroy() {
	if k.rsa != nil {
		wipeInt(k.rsa.D)
		for _, p := range k.rsa.Primes {
			wipeInt(p)
		}
		wipeInt(k.rsa.Precomputed.Dp)
		wipeInt(k.rsa.Precomputed.Dq)
		wipeInt(k.rsa.Precomputed.Qinv)
		k.rsa = nil
	}
	k.hpke = nil
}

func wipeInt(n *big.Int) {
	if n != nil {
		clear(n.Bits())
		n.SetInt64(0)
	}
}
