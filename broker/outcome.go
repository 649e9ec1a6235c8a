package broker

import "errors"

// Outcome is how an operation ended: done, or refused or failed for a
// reason. It is the one vocabulary of both sides of the domain: broker
// records it — the status of an audit row is its AuditStatus — and the
// HTTP layer answers it (vaultapi maps each Outcome to a status, a code
// and a message, and a test there holds that status to AuditStatus for
// every outcome).
type Outcome int

// The outcomes. The refusals are in the order in which OutcomeOf tries
// their sentinels.
const (
	// OutcomeOK: done.
	OutcomeOK Outcome = iota
	// OutcomeCreated: done, and the user's vault was created.
	OutcomeCreated

	OutcomeNotFound            // ErrNotFound
	OutcomeZKRotateForbidden   // ErrZKRotateForbidden
	OutcomeZKActive            // ErrZKActive
	OutcomeRecoveryWrapMissing // ErrRecoveryWrapMissing
	OutcomeMasterKeyMismatch   // ErrMasterKeyMismatch
	OutcomeKeyProofRequired    // ErrKeyProofRequired
	OutcomeKeyProofMismatch    // ErrKeyProofMismatch
	OutcomeNoRestorableWrap    // ErrNoRestorableWrap
	OutcomeInvalidArgument     // ErrInvalidArgument
	OutcomeUnknownKEK          // ErrUnknownKEK
	OutcomeKEKDenied           // ErrKEKDenied
	OutcomeGrantNotConfigured  // ErrGrantNotConfigured
	OutcomeGrantRecipient      // ErrGrantRecipientUnknown
	OutcomeGrantZeroKnowledge  // ErrGrantZeroKnowledge
	// OutcomeUnknownUser (ErrUnknownUser) is never audited: no audit row
	// can name a user the users table does not know.
	OutcomeUnknownUser

	// OutcomeStoreUnavailable and OutcomeKEKUnavailable: an
	// *UnavailableError of that dependency.
	OutcomeStoreUnavailable
	OutcomeKEKUnavailable
	// OutcomeInternal: anything else — a wrap that does not open, a
	// format-1 wrap once format 1 is closed, a bug.
	OutcomeInternal

	numOutcomes
)

// outcomes is the audit status of each outcome and the sentinel error
// that reports it. The status column of encryption_vault_audit holds what
// the original service stored there, its HTTP status of the request; its
// rows and the rows keybroker writes are read together, so the numbers
// stay.
var outcomes = [numOutcomes]struct {
	auditStatus int
	err         error
}{
	OutcomeOK:                  {200, nil},
	OutcomeCreated:             {201, nil},
	OutcomeNotFound:            {404, ErrNotFound},
	OutcomeZKRotateForbidden:   {409, ErrZKRotateForbidden},
	OutcomeZKActive:            {409, ErrZKActive},
	OutcomeRecoveryWrapMissing: {400, ErrRecoveryWrapMissing},
	OutcomeMasterKeyMismatch:   {409, ErrMasterKeyMismatch},
	OutcomeKeyProofRequired:    {403, ErrKeyProofRequired},
	OutcomeKeyProofMismatch:    {403, ErrKeyProofMismatch},
	OutcomeNoRestorableWrap:    {404, ErrNoRestorableWrap},
	OutcomeInvalidArgument:     {400, ErrInvalidArgument},
	OutcomeUnknownKEK:          {503, ErrUnknownKEK},
	OutcomeKEKDenied:           {503, ErrKEKDenied},
	OutcomeGrantNotConfigured:  {503, ErrGrantNotConfigured},
	OutcomeGrantRecipient:      {400, ErrGrantRecipientUnknown},
	OutcomeGrantZeroKnowledge:  {409, ErrGrantZeroKnowledge},
	OutcomeUnknownUser:         {403, ErrUnknownUser},
	OutcomeStoreUnavailable:    {503, nil},
	OutcomeKEKUnavailable:      {503, nil},
	OutcomeInternal:            {500, nil},
}

// Outcomes lists every outcome.
func Outcomes() []Outcome {
	all := make([]Outcome, numOutcomes)
	for i := range all {
		all[i] = Outcome(i)
	}
	return all
}

// AuditStatus is the status an audit row of o records.
func (o Outcome) AuditStatus() int { return outcomes[o].auditStatus }

// OutcomeOf is the outcome an operation's error reports: OutcomeOK for
// nil, an *UnavailableError's dependency, the first refusal whose
// sentinel err wraps, or else OutcomeInternal.
func OutcomeOf(err error) Outcome {
	if err == nil {
		return OutcomeOK
	}
	var unavailable *UnavailableError
	if errors.As(err, &unavailable) {
		if unavailable.Dependency == DependencyKEK {
			return OutcomeKEKUnavailable
		}
		return OutcomeStoreUnavailable
	}
	for o, row := range outcomes {
		if row.err != nil && errors.Is(err, row.err) {
			return Outcome(o)
		}
	}
	return OutcomeInternal
}
