package broker

import "context"

// The store contract: every interface broker consumes from a store, in
// one place. Store is what every store implements (pgstore and
// sqlitestore both do, and broker/storetest checks both); it is made of
// small interfaces, one per ability, so that a function can ask for no
// more than it uses. VaultFetcher and RewrapLocker are the only optional
// abilities, found by type assertion: the fetch path in one round trip,
// and one re-wrap runner across replicas, which a store shared by several
// processes has (PostgreSQL) and a single-node one does not need (SQLite).
//
// Every method may also return an *UnavailableError when the store could
// not be reached, timed out or was closed, and a method given a user id
// returns ErrInvalidArgument when it is empty; the docs below name the
// other errors.

// Store is the whole store contract.
type Store interface {
	UserTxStore
	VaultReader
	AuditAppender
	Format1Store
	RewrapStore
	RewrapBatchStore
	DataKeyStore
	DataKeyDeleter
	AdminStore
}

// UserTxStore runs transactions scoped to one user. Implementations set
// the row-level-security scope (app.current_user_id) inside each
// transaction.
type UserTxStore interface {
	// InUserTx runs fn in one transaction scoped to userID and commits it
	// when fn returns nil; any error rolls it back and is returned as is.
	// A context cancelled before the commit stores nothing.
	InUserTx(ctx context.Context, userID string, fn func(tx Tx) error) error
}

// Tx is the work a vault operation does inside one user-scoped
// transaction. After a method failed, the transaction may be unusable:
// return the error from fn.
type Tx interface {
	// VaultGet returns the user's vault, locking it for the rest of the
	// transaction when forUpdate is set. It returns ErrNotFound when the
	// user has none.
	VaultGet(ctx context.Context, forUpdate bool) (*Vault, error)
	// VaultInsert inserts v unless the user already has a vault; it
	// reports whether this call inserted the row. It returns
	// ErrDataKeyDeleted when v's server wrap names a deleted data key,
	// ErrUnknownUser when the store's users table does not know the user
	// (an adopted schema), and an error naming the CHECK constraint a bad
	// row breaks.
	VaultInsert(ctx context.Context, v *Vault) (inserted bool, err error)
	// VaultUpdate overwrites the user's vault with v. It returns
	// ErrNotFound when the row is gone, and the errors of VaultInsert for
	// a row it refuses.
	VaultUpdate(ctx context.Context, v *Vault) error
	// AuditInsert appends one audit row. It returns ErrUnknownUser when the
	// store's users table does not know the user.
	AuditInsert(ctx context.Context, e *AuditEntry) error
}

// VaultReader reads one user's vault in a single short read-only round
// trip, outside any explicit transaction. The fetch hot path uses it with
// an AuditAppender.
type VaultReader interface {
	// VaultRead returns the user's vault or ErrNotFound.
	VaultRead(ctx context.Context, userID string) (*Vault, error)
}

// AuditAppender durably appends the audit rows of operations that change
// nothing, several users' rows in one commit. It returns only once the
// rows are durable.
type AuditAppender interface {
	// AuditAppend writes entries in one transaction: all or none. When
	// one entry made it fail, the error is a *BatchItemError naming it
	// if the store can tell (the others are then written without it).
	AuditAppend(ctx context.Context, entries []*AuditEntry) error
}

// VaultFetcher is an optional Store ability, the fetch hot path in one
// round trip: read the vaults of several users and record the audit row
// that each read calls for, all in one commit. The Service uses it with
// an AuditAppender, which records what the read could not; without it the
// Service reads with VaultReader and records with AuditAppender.
type VaultFetcher interface {
	// VaultFetch runs every fetch of b, each under its own user's scope,
	// and sets its Vault. It returns once the audit rows are durable. It
	// is all or nothing: on error no fetch of b was recorded and no Vault
	// may be used. When one fetch made it fail, the error is a
	// *BatchItemError naming it (the others are then run again without
	// it): an empty user id (ErrInvalidArgument) or one the store's users
	// table does not know (ErrUnknownUser).
	VaultFetch(ctx context.Context, b *FetchBatch) error
}

// Format1Store keeps the format-1 closure flag (format1.go).
type Format1Store interface {
	// Format1State reads whether format 1 is closed. A store whose flag is
	// missing reports closed.
	Format1State(ctx context.Context) (Format1State, error)
	// Format1Close closes format 1 for good, recording runner, unless a
	// row with a format-1 server wrap is left; the check and the closing
	// are one atomic step. It returns the state after: still open when
	// such rows are left, and the first closing's time and runner when it
	// was closed already.
	Format1Close(ctx context.Context, runner string) (Format1State, error)
}

// RewrapStore is what the re-wrap job and `kek status` need to find rows
// across users, which row-level security otherwise forbids. It reads a
// non-secret index (user id, KEK id, format, whether the server holds a
// wrap), never key material.
type RewrapStore interface {
	// RewrapCandidates returns up to q.Limit user ids, in ascending order
	// after q.After, whose rows hold a server wrap and match q.
	RewrapCandidates(ctx context.Context, q RewrapQuery) ([]string, error)
	// KEKCounts returns the number of rows per KEK id, format and mode,
	// ordered by KEK id, format, Wrapped and ZeroKnowledge.
	KEKCounts(ctx context.Context) ([]KEKCount, error)
}

// RewrapBatchStore reads and writes many users' rows in one transaction
// each, every row still in its own user's scope.
type RewrapBatchStore interface {
	// RewrapRead returns the vaults of userIDs that exist, without
	// locking them. It returns ErrInvalidArgument for an empty user id
	// (and, on a store that requires them distinct, a repeated one).
	RewrapRead(ctx context.Context, userIDs []string) ([]*Vault, error)
	// RewrapApply applies the swaps in one transaction and reports, per
	// swap, whether it was applied: a swap applies only when the row's
	// wrap columns (wrapped_mk, wrap_iv, format_version, kek_id,
	// zero_knowledge) still equal those of Old. It then writes New's wrap
	// columns, New's key check value where the row has none, and Audit.
	// Nothing else of the row changes. It returns ErrInvalidArgument for a
	// swap whose Old, New and Audit do not name one non-empty user, and
	// ErrDataKeyDeleted as VaultUpdate does.
	RewrapApply(ctx context.Context, swaps []RewrapSwap) (applied []bool, err error)
}

// RewrapLocker is an optional Store ability of stores that several
// replicas share: it makes one of them the job's only runner. A store
// without it serves one node, where runs only take turns on its writes.
type RewrapLocker interface {
	// RewrapLock takes the job's lock for runner (a name for status). It
	// returns ErrRewrapBusy when another runner holds it. The lock dies
	// with the process that holds it, so a crashed runner never blocks
	// the next one.
	RewrapLock(ctx context.Context, runner string) (RewrapLease, error)
	// RewrapState reports whether a runner holds the lock now and what the
	// current or last runner reported.
	RewrapState(ctx context.Context) (*RewrapState, error)
}

// RewrapLease is a held job lock.
type RewrapLease interface {
	// Held returns nil while the lock is held and an error once it is
	// lost (the connection that held it died) or released.
	Held(ctx context.Context) error
	// Report records progress for RewrapState readers.
	Report(ctx context.Context, p RewrapProgress) error
	// Release records the final progress and gives the lock up.
	Release(ctx context.Context, p RewrapProgress) error
}

// DataKeyStore keeps the data-key table of cached envelope mode
// (datakeys.go). Data keys are ciphertext under a KMS and not per-user, so
// the table has no row-level security.
type DataKeyStore interface {
	// DataKeyList returns every data key, oldest first: by CreatedAt,
	// then by id. The last is the newest.
	DataKeyList(ctx context.Context) ([]DataKey, error)
	// DataKeyInsert stores dk as the newest data key, provided the newest
	// one now is still after ("" when there is none), and reports whether
	// it did. It checks and inserts atomically: of several replicas that
	// mint at once, one wins. It stores dk.CreatedAt (its own clock when
	// zero) or, when that is not later than every other data key's, a
	// moment after the newest's: the list's order is the order of the
	// inserts.
	DataKeyInsert(ctx context.Context, dk DataKey, after string) (bool, error)
	// DataKeyRewrap replaces the wrap of data key id, provided it is still
	// wrapped by fromKEK; it reports whether it did.
	DataKeyRewrap(ctx context.Context, id, fromKEK string, wrapped []byte, toKEK string) (bool, error)
}

// DataKeyWrapStore keeps the wraps of a data key beyond its first, when
// several KEKs wrap every data key (KeyringConfig.Also). DataKeyList then
// returns them in DataKey.Wraps, and DataKeyInsert stores those of the
// new data key in the same transaction.
type DataKeyWrapStore interface {
	// DataKeyAddWrap stores wrapped as data key id's wrap by kekID,
	// provided the data key exists and kekID does not wrap it yet; it
	// reports whether it did.
	DataKeyAddWrap(ctx context.Context, id, kekID string, wrapped []byte) (bool, error)
}

// DataKeyDeleter deletes a data key that no row needs any more.
type DataKeyDeleter interface {
	// DataKeyDelete deletes data key id, provided it is not the newest and
	// no row with a server wrap names it, and reports whether it did. It
	// remembers the id, and from then on refuses every write of a row
	// with a server wrap under it with ErrDataKeyDeleted. The check and the
	// delete are atomic with respect to such writes: a concurrent one
	// either commits first, and the key stays, or is refused.
	DataKeyDelete(ctx context.Context, id string) (bool, error)
}

// AdminStore is the per-user reads and the erasure behind the service
// endpoints (admin.go); the vault operations never need it.
// Implementations scope each call to userID the way InUserTx does, so
// row-level security still applies.
type AdminStore interface {
	// VaultMeta returns the user's vault (nil when the user has none) and
	// the number of the user's audit rows, read in one snapshot.
	VaultMeta(ctx context.Context, userID string) (*Vault, int64, error)
	// AuditPage returns up to limit of the user's audit rows in ascending
	// (CreatedAt, ID) order, starting after the row named by after (from
	// the first row when after is nil). It returns ErrInvalidArgument for
	// a limit below 1.
	AuditPage(ctx context.Context, userID string, after *AuditCursor, limit int) ([]AuditEntry, error)
	// AuditByAction returns up to q.Limit of the user's audit rows whose
	// action is q.Action and status q.Status, newest first: in
	// descending (CreatedAt, ID) order. It returns ErrInvalidArgument for
	// a limit below 1.
	AuditByAction(ctx context.Context, userID string, q AuditQuery) ([]AuditEntry, error)
	// VaultErase deletes the user's vault and every audit row of the user
	// in one transaction and reports what it deleted. It writes nothing
	// else but, when mark is set and returns a mark for the deleted audit
	// rows, that mark (AuditMarkStore), which names no user: an erasure
	// must not leave a row that names the user.
	VaultErase(ctx context.Context, userID string, mark EraseMarker) (EraseResult, error)
}

// EraseMarker returns the mark of the audit rows an erasure deletes
// (AuditKey.ErasureMark), nil for none.
type EraseMarker func(erased []AuditEntry) *AuditMark
