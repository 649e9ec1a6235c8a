package broker

import (
	"errors"
	"fmt"

	"github.com/keybroker/keybroker/kek"
)

// Sentinel errors of vault operations. Each reports an Outcome
// (OutcomeOf): the one its audit row records and the HTTP layer answers.
var (
	// ErrNotFound means the user has no vault.
	ErrNotFound = errors.New("vault not initialised")
	// ErrZKRotateForbidden refuses a master-key rotation in zero-knowledge
	// mode: the server cannot re-wrap a key it cannot read.
	ErrZKRotateForbidden = errors.New("cannot rotate in zero-knowledge mode")
	// ErrZKActive refuses to clear the recovery wrap while it is the only
	// wrap of the master key.
	ErrZKActive = errors.New("cannot clear recovery wrap while zero-knowledge is active")
	// ErrRecoveryWrapMissing refuses to enable zero-knowledge mode before a
	// recovery wrap is stored.
	ErrRecoveryWrapMissing = errors.New("set a recovery wrap before enabling zero-knowledge")
	// ErrMasterKeyMismatch refuses a master key that is not the user's.
	ErrMasterKeyMismatch = errors.New("masterKey is not this vault's master key")
	// ErrKeyProofRequired refuses to replace the recovery wrap of a
	// zero-knowledge vault without a proof that the caller holds the
	// master key: a bearer token alone must not replace the only wrap.
	ErrKeyProofRequired = errors.New("replacing the recovery wrap in zero-knowledge mode needs keyProof")
	// ErrKeyProofMismatch refuses a key possession proof that is not the
	// proof of this vault's master key.
	ErrKeyProofMismatch = errors.New("keyProof is not the proof of this vault's master key")
	// ErrNoRestorableWrap means the vault's restore slot is empty: there
	// is no recovery wrap to restore or discard.
	ErrNoRestorableWrap = errors.New("no restorable recovery wrap")
	// ErrInvalidArgument is input the domain refuses (wrong length, empty
	// user id).
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrUnknownKEK means a row names a KEK id that is not configured.
	ErrUnknownKEK = errors.New("unknown KEK id")
	// ErrUnwrapFailed means a stored wrap did not open: corrupt data, a
	// wrap copied from another row, or the wrong key under a known id.
	ErrUnwrapFailed = errors.New("stored wrap does not unwrap")
	// ErrKEKDenied means the KEK's backend refused the operation: a
	// disabled or revoked key, a missing permission. Not the data's fault,
	// and not fixed by retrying; an operator must act.
	ErrKEKDenied = errors.New("the KEK refused the operation")
	// ErrUnknownUser means the store's users table does not know the
	// user: on a schema adopted from the original service
	// (KEYBROKER_SCHEMA=auth) both tables reference auth.users, so a
	// deleted account whose token has not expired can neither have a
	// vault nor an audit row. Nothing was written.
	ErrUnknownUser = errors.New("the user is not a known account")
	// ErrGrantNotConfigured refuses a mission grant for a recipient that
	// is not configured: the default one (a request that names none)
	// without MANA_AI_PUBLIC_KEY_PEM.
	ErrGrantNotConfigured = errors.New("mission grants are not configured: no recipient public key")
	// ErrGrantRecipientUnknown refuses a mission grant naming a
	// recipient that is not configured.
	ErrGrantRecipientUnknown = errors.New("no such mission grant recipient")
	// ErrGrantZeroKnowledge refuses a mission grant in zero-knowledge
	// mode: the server holds no master key to derive from.
	ErrGrantZeroKnowledge = errors.New("zero-knowledge mode is active: the server holds no key to derive a mission key from")
	// ErrDataKeyDeleted is a store's refusal of a write whose row names a
	// deleted data key as its kek_id: the writer wrapped under a data key
	// its keyring still held after the re-wrap job deleted it. The
	// service reloads the data keys and retries such a write once.
	ErrDataKeyDeleted = errors.New("the row names a deleted data key")
)

// BatchItemError is returned by a store call that carries many requests
// (VaultFetcher.VaultFetch, AuditAppender.AuditAppend) when one item made
// the whole call fail: nothing of the call was recorded, and the other
// items may succeed without it. Index is the item's position in the
// call's slice; Err is its own error.
type BatchItemError struct {
	Index int
	Err   error
}

func (e *BatchItemError) Error() string {
	return fmt.Sprintf("item %d of the batch: %v", e.Index, e.Err)
}

func (e *BatchItemError) Unwrap() error { return e.Err }

// Dependencies named by UnavailableError.
const (
	DependencyStore = "store"
	DependencyKEK   = "kek"
)

// UnavailableError reports that a dependency (the store or a KEK
// provider) could not be reached or timed out. Retrying later may work;
// nothing was changed.
type UnavailableError struct {
	Dependency string // DependencyStore or DependencyKEK
	Err        error
}

func (e *UnavailableError) Error() string {
	return fmt.Sprintf("%s unavailable: %v", e.Dependency, e.Err)
}

func (e *UnavailableError) Unwrap() error { return e.Err }

// Unavailable reports true: kek.Classify, which readiness and the KEK
// checks ask, counts this error as an outage too.
func (e *UnavailableError) Unavailable() bool { return true }

// IsUnavailable reports whether err says a dependency is unreachable.
func IsUnavailable(err error) bool {
	var u *UnavailableError
	return errors.As(err, &u)
}

// classifyKEKError turns a KEK error into a domain error by its
// kek.Classify class: an outage (unavailable, a timeout, a cancelled
// call) becomes *UnavailableError, a refusal ErrKEKDenied, and anything
// else is returned wrapped in base. An *UnavailableError the domain made
// itself (a data key not loaded yet) is returned as it is.
func classifyKEKError(base error, err error) error {
	var ue *UnavailableError
	if errors.As(err, &ue) {
		return err
	}
	switch c := kek.Classify(err); {
	case c.Outage():
		return &UnavailableError{Dependency: DependencyKEK, Err: err}
	case c == kek.ClassDenied:
		return fmt.Errorf("%w: %w", ErrKEKDenied, err)
	default:
		return fmt.Errorf("%w: %w", base, err)
	}
}
