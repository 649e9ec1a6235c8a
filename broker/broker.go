// Package broker is the domain of keybroker: the per-user master-key
// vault, the keyring of key-encryption keys (KEKs), the audit
// vocabulary, the errors, and the outcomes (Outcome) that audit rows
// record and the HTTP layer answers.
//
// It knows no HTTP, no SQL driver and no KMS SDK. It defines the small
// interfaces it consumes — Store and Tx — and adapters implement them;
// the KEK it consumes is the contract of package kek, which providers
// implement without importing the domain.
package broker

import (
	"time"

	"github.com/keybroker/keybroker/kek"
)

// MasterKeySize is the length in bytes of every user master key.
const MasterKeySize = 32

// Wrap formats recorded in encryption_vaults.format_version.
const (
	// FormatLegacy is the original service's wrap: AES-256-GCM under a
	// local KEK, 12-byte IV in wrap_iv, tag appended, no AAD. keybroker
	// reads it and never writes it.
	FormatLegacy = 1
	// FormatBound is keybroker's wrap: the provider's opaque ciphertext,
	// bound to the row (user id, KEK id, format) through the binding
	// context. wrap_iv is stored as an empty string: any nonce lives
	// inside the provider's ciphertext.
	FormatBound = 2
)

// Vault is one row of encryption_vaults. The wrap columns hold exactly
// what is stored (base64 text), so a corrupt row surfaces as an unwrap
// error of that user, never as a failure to read the table.
type Vault struct {
	UserID                string
	WrappedMK             *string // nil in zero-knowledge mode
	WrapIV                *string // nil together with WrappedMK
	FormatVersion         int
	KEKID                 string
	KeyCheck              *string // base64 key check value; nil on rows written by the original service
	CreatedAt             time.Time
	RotatedAt             *time.Time
	RecoveryWrappedMK     *string
	RecoveryIV            *string
	RecoveryFormatVersion int
	RecoverySetAt         *time.Time
	ZeroKnowledge         bool

	// KeyProof is the verifier of the key possession proof (KeyProof):
	// the base64 SHA-256 of the proof, ':', and the key check value it
	// was recorded with. nil until the server held this key since the
	// column exists: rows of the original service, and rows that went
	// zero-knowledge before it. A verifier whose key check value is not
	// the row's is stale (another release rotated the key) and ignored.
	KeyProof *string
	// Restorable is the restore slot: a recovery wrap the server kept
	// before it accepted a change it could not verify, for the operator
	// to restore (RestoreRecoveryWrap). nil when the slot is empty.
	Restorable *RestorableRecovery
}

// RestorableRecovery is the zero-knowledge recovery state of a vault as
// it was before a change the server could not verify: the recovery wrap
// with the key check value and proof verifier that belonged to it.
type RestorableRecovery struct {
	WrappedMK     string // base64, as in recovery_wrapped_mk
	IV            string // base64, as in recovery_iv
	FormatVersion int
	SetAt         *time.Time
	KeyCheck      *string
	KeyProof      *string
	// TakenAt is when the server kept it.
	TakenAt time.Time
}

// Action is an audit action, as written to encryption_vault_audit.action.
type Action string

// The original service's audit vocabulary, plus keybroker's own.
const (
	ActionInit          Action = "init"
	ActionFetch         Action = "fetch"
	ActionFailedFetch   Action = "failed_fetch"
	ActionRotate        Action = "rotate"
	ActionRecoverySet   Action = "recovery_set"
	ActionRecoveryClear Action = "recovery_clear"
	ActionZKEnable      Action = "zk_enable"
	ActionZKDisable     Action = "zk_disable"
	ActionKEKRewrap     Action = "kek_rewrap"
	// ActionRecoveryRestore is the operator's restore of the restore
	// slot; ActionRecoveryDiscard empties the slot.
	ActionRecoveryRestore Action = "recovery_restore"
	ActionRecoveryDiscard Action = "recovery_discard"
	// ActionMissionGrant is a mission grant: a mission data key derived
	// and wrapped to a worker (Service.Grant). Its context names the
	// mission, the recipient and a digest of the scope, never the key.
	ActionMissionGrant Action = "mission_grant"
)

// AuditEntry is one row of encryption_vault_audit. Context is a short
// machine-readable note ("created", "already-exists", "unknown-kek"); it
// never holds key material.
type AuditEntry struct {
	ID        string
	UserID    string
	Action    Action
	IPAddress string
	UserAgent string
	Context   string
	Status    int // the AuditStatus of the operation's Outcome
	CreatedAt time.Time
	// MAC is the row's MAC under the audit key (AuditKey.RowMAC), nil
	// for a row written without the key (docs/audit.md).
	MAC []byte
}

// RequestMeta is what the HTTP layer knows about a request that the audit
// trail records. Its fields may hold any bytes a client sent: the
// Service cleans them (AuditText) before a store sees them.
type RequestMeta struct {
	IPAddress string
	UserAgent string
}

// KEK is a key-encryption key: a provider that reports its id and wraps
// and unwraps bytes bound to a binding context (see BindingContext).
// It is kek.KEK itself, not a copy: any provider is one, and its optional
// abilities (kek.StatusChecker, kek.Rewrapper, …) are found on it by type
// assertion. The alias spares the domain's code, where "kek" is the
// natural name of a variable, from naming the package.
type KEK = kek.KEK
