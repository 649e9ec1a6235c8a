//go:build cgo

package pkcs11

import (
	"crypto/rand"
	"fmt"

	cryptoki "github.com/miekg/pkcs11"
)

func gcm(iv, aad []byte) (*cryptoki.GCMParams, []*cryptoki.Mechanism) {
	params := cryptoki.NewGCMParams(iv, aad, tagSize*8)
	return params, []*cryptoki.Mechanism{cryptoki.NewMechanism(cryptoki.CKM_AES_GCM, params)}
}

// encrypt is one C_EncryptInit and C_Encrypt with CKM_AES_GCM: a random
// IV, the binding as AAD, a 128-bit tag. It returns IV ‖ ciphertext ‖ tag
// with the IV the token reports having used (a token may generate its
// own and write it back).
func (k *KEK) encrypt(s cryptoki.SessionHandle, key cryptoki.ObjectHandle, plaintext, aad []byte) ([]byte, error) {
	iv := make([]byte, ivSize)
	rand.Read(iv)
	params, mech := gcm(iv, aad)
	defer params.Free()
	if err := k.p.EncryptInit(s, mech, key); err != nil {
		return nil, err
	}
	sealed, err := k.p.Encrypt(s, plaintext)
	if err != nil {
		return nil, err
	}
	used := params.IV()
	if len(used) != ivSize || len(sealed) != len(plaintext)+tagSize {
		return nil, fmt.Errorf("the token's AES-GCM answer has a %d-byte IV and %d bytes for %d: want a %d-byte IV and a %d-byte tag",
			len(used), len(sealed), len(plaintext), ivSize, tagSize)
	}
	out := make([]byte, 0, ivSize+len(sealed))
	return append(append(out, used...), sealed...), nil
}

// decrypt opens IV ‖ ciphertext ‖ tag; the caller checked its length.
func (k *KEK) decrypt(s cryptoki.SessionHandle, key cryptoki.ObjectHandle, wrapped, aad []byte) ([]byte, error) {
	params, mech := gcm(wrapped[:ivSize], aad)
	defer params.Free()
	if err := k.p.DecryptInit(s, mech, key); err != nil {
		return nil, err
	}
	return k.p.Decrypt(s, wrapped[ivSize:])
}

// errBadWrap marks a decrypt that the token refused because the wrap
// does not authenticate.
type errBadWrap struct{ err error }

func (e errBadWrap) Error() string { return e.err.Error() }
func (e errBadWrap) Unwrap() error { return e.err }

// decryptFailed tells a wrap that does not open from a token that does
// not work. A standard tag-mismatch code says so itself. The module's own
// code for it, when that is a generic one (a general error), is believed
// only once the canary still opens on the same session.
func (k *KEK) decryptFailed(s cryptoki.SessionHandle, key cryptoki.ObjectHandle, err error) error {
	rv, ok := rvOf(err)
	if !ok {
		return err
	}
	if tagMismatchRVs[rv] {
		return errBadWrap{err}
	}
	k.mu.Lock()
	tagFailure, canary := k.tagFailure, k.canary
	k.mu.Unlock()
	if tagFailure == 0 || rv != tagFailure {
		return err
	}
	if _, cerr := k.decrypt(s, key, canary, k.selfTestBinding("keybroker:pkcs11-self-test")); cerr != nil {
		// The token fails even on a wrap it made: not the data's fault.
		return fmt.Errorf("%w (and the self-test wrap no longer opens: %v)", err, cerr)
	}
	return errBadWrap{err}
}
