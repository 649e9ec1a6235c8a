//go:build cgo

package pkcs11

import (
	"errors"

	cryptoki "github.com/miekg/pkcs11"

	"github.com/keybroker/keybroker/kek"
)

// ckrAEADDecryptFailed is PKCS#11 v3.0's code for an AEAD tag mismatch
// (the module's v2.40 headers predate it).
const ckrAEADDecryptFailed cryptoki.Error = 0x35

// rvOf returns the PKCS#11 return value in err's chain.
func rvOf(err error) (cryptoki.Error, bool) {
	var rv cryptoki.Error
	ok := errors.As(err, &rv)
	return rv, ok
}

// outageRVs say the token could not answer: it is gone, broken, out of
// resources, or the module lost it. Retrying later may work.
var outageRVs = map[cryptoki.Error]bool{
	cryptoki.CKR_HOST_MEMORY:              true,
	cryptoki.CKR_SLOT_ID_INVALID:          true,
	cryptoki.CKR_GENERAL_ERROR:            true,
	cryptoki.CKR_FUNCTION_FAILED:          true,
	cryptoki.CKR_CANT_LOCK:                true,
	cryptoki.CKR_DEVICE_ERROR:             true,
	cryptoki.CKR_DEVICE_MEMORY:            true,
	cryptoki.CKR_DEVICE_REMOVED:           true,
	cryptoki.CKR_FUNCTION_CANCELED:        true,
	cryptoki.CKR_SESSION_CLOSED:           true,
	cryptoki.CKR_SESSION_COUNT:            true,
	cryptoki.CKR_SESSION_HANDLE_INVALID:   true,
	cryptoki.CKR_TOKEN_NOT_PRESENT:        true,
	cryptoki.CKR_TOKEN_NOT_RECOGNIZED:     true,
	cryptoki.CKR_CRYPTOKI_NOT_INITIALIZED: true,
}

// deniedRVs say the token answered and refused: the PIN, the login, the
// key's permissions or its kind. An operator has to act.
var deniedRVs = map[cryptoki.Error]bool{
	cryptoki.CKR_PIN_INCORRECT:              true,
	cryptoki.CKR_PIN_INVALID:                true,
	cryptoki.CKR_PIN_LEN_RANGE:              true,
	cryptoki.CKR_PIN_EXPIRED:                true,
	cryptoki.CKR_PIN_LOCKED:                 true,
	cryptoki.CKR_USER_NOT_LOGGED_IN:         true,
	cryptoki.CKR_USER_PIN_NOT_INITIALIZED:   true,
	cryptoki.CKR_USER_TYPE_INVALID:          true,
	cryptoki.CKR_KEY_HANDLE_INVALID:         true,
	cryptoki.CKR_OBJECT_HANDLE_INVALID:      true,
	cryptoki.CKR_KEY_FUNCTION_NOT_PERMITTED: true,
	cryptoki.CKR_KEY_TYPE_INCONSISTENT:      true,
	cryptoki.CKR_KEY_SIZE_RANGE:             true,
	cryptoki.CKR_MECHANISM_INVALID:          true,
	cryptoki.CKR_MECHANISM_PARAM_INVALID:    true,
	cryptoki.CKR_ACTION_PROHIBITED:          true,
}

// pinRVs are the answers to C_Login that a second try with the same PIN
// cannot change, and that count towards locking the token.
var pinRVs = map[cryptoki.Error]bool{
	cryptoki.CKR_PIN_INCORRECT: true,
	cryptoki.CKR_PIN_INVALID:   true,
	cryptoki.CKR_PIN_LEN_RANGE: true,
	cryptoki.CKR_PIN_EXPIRED:   true,
	cryptoki.CKR_PIN_LOCKED:    true,
}

// sessionLostRVs mean the session is gone (closed by a token reset or a
// reconnect, or logged out): a call is retried once on a new session.
var sessionLostRVs = map[cryptoki.Error]bool{
	cryptoki.CKR_SESSION_CLOSED:         true,
	cryptoki.CKR_SESSION_HANDLE_INVALID: true,
	cryptoki.CKR_USER_NOT_LOGGED_IN:     true,
	cryptoki.CKR_DEVICE_REMOVED:         true,
	cryptoki.CKR_TOKEN_NOT_PRESENT:      true,
}

// handleLostRVs mean the key's object handle is no longer valid: the key
// was deleted, or the token was removed or reset. The key is looked up
// again before the call is retried once.
var handleLostRVs = map[cryptoki.Error]bool{
	cryptoki.CKR_KEY_HANDLE_INVALID:    true,
	cryptoki.CKR_OBJECT_HANDLE_INVALID: true,
}

// tagMismatchRVs are the standard answers of C_Decrypt to a GCM tag that
// does not verify. Some modules answer otherwise (SoftHSM: a general
// error); the self-test learns that module's answer (see KEK.tagFailure).
var tagMismatchRVs = map[cryptoki.Error]bool{
	cryptoki.CKR_ENCRYPTED_DATA_INVALID:   true,
	cryptoki.CKR_ENCRYPTED_DATA_LEN_RANGE: true,
	ckrAEADDecryptFailed:                  true,
}

// classify gives a PKCS#11 error its class (kek.Classify): an outage or a
// refusal; anything else is left as it is (a bug or a misconfiguration).
func classify(err error) error {
	rv, ok := rvOf(err)
	switch c := kek.Classify(err); {
	case c == kek.ClassUnavailable || c == kek.ClassDenied:
		return err // classified already
	case !ok:
		return err
	case outageRVs[rv]:
		return kek.Unavailable(err)
	case deniedRVs[rv]:
		return kek.Denied(err)
	default:
		return err
	}
}
