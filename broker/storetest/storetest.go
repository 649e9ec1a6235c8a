// Package storetest is the contract every broker.Store implementation
// passes: the PostgreSQL store and the embedded SQLite store run the same
// suite (Run and RunDataKeys), so the domain can rely on one behaviour.
//
// The contract, beyond the interfaces' doc comments:
//   - every Vault and AuditEntry field round-trips, nil pointers included
//     (the restore slot, Vault.Restorable, whole or nil); timestamps to
//     the microsecond;
//   - the three CHECK constraints of encryption_vaults (has_wrap,
//     wrap_iv_pair, zk_consistency) and the format-version check reject a
//     bad row with an error that names the constraint, and the stored row
//     is left as it was;
//   - a transaction sees and writes only the rows of its own user;
//   - a transaction whose fn fails, or whose context is cancelled before
//     commit, stores nothing, audit rows included;
//   - of concurrent inserts for one user exactly one wins, and a loser
//     reads the winner's row in the same transaction;
//   - VaultGet(ctx, true) serialises read-modify-write cycles;
//   - the fetch path: VaultRead sees its own user's row only, AuditAppend
//     and VaultFetch (where the store has it) commit the rows of many
//     users at once, all or nothing, naming the item that failed a batch
//     when the store can tell, and VaultFetch records the row of each case
//     as broker.FetchBatch.Case decides;
//   - the re-wrap index lists candidates in user-id order, page by page,
//     never zero-knowledge rows, and counts rows per KEK id, format and
//     mode; a batch swap writes only rows still on the wrap read, with its
//     audit row, and nothing else of the row; the job's lock (where the
//     store has one) admits one runner;
//   - the store keeps the format-1 closure (broker.Format1Store): closed
//     on a fresh store, closed by Format1Close only once no row with a
//     format-1 server wrap is left, and never open again — writing
//     format-1 rows afterwards changes nothing;
//   - the admin reads report the vault exactly as stored and count only
//     the user's own audit rows, pages walk every row of the user once in
//     (CreatedAt, ID) order, and erasure deletes the user's vault and
//     audit rows and nothing of any other user, idempotently;
//   - data keys (RunDataKeys): the list's order is the order of the
//     inserts, one of several minters wins, a re-wrap is compare-and-swap,
//     and a deleted data key is never named by a server wrap again;
//   - tamper evidence (RunAuditSeal, docs/audit.md): the audit key is one
//     key whatever the replicas and KEK rotations, every row keybroker
//     wrote verifies, and an edit, a deletion, an insertion or a move in
//     time made with SQL is named, while retention and erasure with their
//     marks are not.
//   - announcements (RunReplicas, stores that are broker.ReplicaStore):
//     every field lists back, a renewal replaces and a leave removes one,
//     and one not renewed lapses by the store's clock.
//     and a deleted data key is never named by a server wrap again.
//   - audit retention (RunAuditRetention, broker.AuditKeeper): rows of
//     any time are written and kept without a retention; with one, rows
//     older than it go (PostgreSQL: by whole days) and newer ones stay;
//     the status names the oldest and newest row and the last run.
package storetest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
)

// Harness is a store under test.
type Harness struct {
	// Store is the implementation under test.
	Store broker.Store
	// AuditRows reads back every audit row of userID, oldest first (ties
	// in any order), bypassing Store: the suite checks what was really
	// written. Implementations use their raw SQL.
	AuditRows func(ctx context.Context, userID string) ([]broker.AuditEntry, error)
	// ReopenFormat1 opens format 1 on Store again, as the owner of a
	// database that held the original service's rows does (a fresh store
	// starts closed).
	ReopenFormat1 func(t *testing.T)
}

// NewHarness returns the store of one subtest, on that subtest's t. With
// empty set it is a new, empty store: the subtest reads across users (the
// re-wrap index, the data keys, the format-1 closure). Otherwise it may be
// shared with other subtests, which run in parallel on distinct user ids.
type NewHarness func(t *testing.T, empty bool) Harness

type subtest struct {
	name  string
	empty bool // needs a store of its own
	fn    func(t *testing.T, h Harness)
}

// run runs each test in parallel on a store of newHarness.
func run(t *testing.T, newHarness NewHarness, tests []subtest) {
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			tc.fn(t, newHarness(t, tc.empty))
		})
	}
}

// Run runs the whole contract but its data-key part, which RunDataKeys
// runs.
func Run(t *testing.T, newHarness NewHarness) {
	run(t, newHarness, []subtest{
		{"GetMissingIsNotFound", false, testGetMissingIsNotFound},
		{"RoundTripEveryField", false, testRoundTripEveryField},
		{"RoundTripNilPointers", false, testRoundTripNilPointers},
		{"RoundTripZeroKnowledge", false, testRoundTripZeroKnowledge},
		{"RoundTripRestorableNilFields", false, testRoundTripRestorableNilFields},
		{"InsertConflictReportsFalse", false, testInsertConflictReportsFalse},
		{"UpdateOverwritesEveryField", false, testUpdateOverwritesEveryField},
		{"UpdateMissingIsNotFound", false, testUpdateMissingIsNotFound},
		{"RollbackOnError", false, testRollbackOnError},
		{"CancelledBeforeCommitStoresNothing", false, testCancelledBeforeCommitStoresNothing},
		{"EmptyUserRefused", false, testEmptyUserRefused},
		{"ConstraintZKWithServerWrapRejected", false, testConstraintZKWithServerWrapRejected},
		{"ConstraintWrapIVPair", false, testConstraintWrapIVPair},
		{"ConstraintHasWrap", false, testConstraintHasWrap},
		{"ConstraintFormatVersionKnown", false, testConstraintFormatVersionKnown},
		{"ScopedToUser", false, testScopedToUser},
		{"ConcurrentInsertOneWinner", false, testConcurrentInsertOneWinner},
		{"ForUpdateSerialises", false, testForUpdateSerialises},
		{"AuditRoundTrip", false, testAuditRoundTrip},

		{"VaultReadSeesOnlyItsUser", false, testVaultReadSeesOnlyItsUser},
		{"AuditAppendCommitsManyUsersAtOnce", false, testAuditAppendManyUsers},
		{"AuditAppendIsAllOrNothing", false, testAuditAppendAllOrNothing},
		{"VaultFetchRecordsEachCase", false, testVaultFetchRecordsEachCase},
		{"VaultFetchIsAllOrNothing", false, testVaultFetchAllOrNothing},

		{"RewrapCandidatesPageInUserOrder", true, testRewrapCandidates},
		{"RewrapKEKCounts", true, testRewrapKEKCounts},
		{"RewrapReadAndCompareAndSwap", true, testRewrapReadAndSwap},
		{"RewrapBatchesRefuseEmptyUserIDs", false, testRewrapBatchesRefuseEmptyUserIDs},
		{"RewrapLockAdmitsOneRunner", true, testRewrapLock},

		{"Format1ClosedOnFreshStore", false, testFormat1ClosedOnFreshStore},
		{"Format1ClosesOnlyWithoutFormat1Rows", true, testFormat1ClosesOnlyWithoutFormat1Rows},

		{"AdminMetaOfUnknownUserIsNil", false, testMetaOfUnknownUser},
		{"AdminMetaReportsVaultAndOwnAuditRows", false, testMetaReportsVault},
		{"AdminAuditPagesWalkEveryRowOnce", false, testAuditPages},
		{"AdminAuditByActionNewestFirstOfItsUser", false, testAuditByAction},
		{"AdminEraseDeletesOnlyThatUser", false, testEraseDeletesOnlyThatUser},
		{"AdminEraseIsIdempotent", false, testEraseIsIdempotent},
		{"AdminEmptyUserIDIsRefused", false, testAdminEmptyUserID},
	})
}

var errAbort = errors.New("storetest: abort the transaction")

// newUserID returns a user id no other subtest uses, so that subtests can
// share one store.
func newUserID(t *testing.T) string {
	b := make([]byte, 8)
	_, _ = rand.Read(b) // never fails
	return "user-" + hex.EncodeToString(b)
}

func ptr[T any](v T) *T { return &v }

// at returns a fixed UTC instant with microseconds, the precision the
// contract promises.
func at(day, micros int) time.Time {
	return time.Date(2024, time.March, day, 10, 11, 12, micros*1000, time.UTC)
}

// fullVault has every field set to a distinct non-zero value.
func fullVault(userID string) *broker.Vault {
	return &broker.Vault{
		UserID:                userID,
		WrappedMK:             ptr("d3JhcHBlZC1tay1iYXNlNjQ="),
		WrapIV:                ptr(""),
		FormatVersion:         broker.FormatBound,
		KEKID:                 "kek-2024",
		KeyCheck:              ptr("a2V5LWNoZWNrLXZhbHVl"),
		CreatedAt:             at(1, 123456),
		RotatedAt:             ptr(at(2, 654321)),
		RecoveryWrappedMK:     ptr("cmVjb3Zlcnktd3JhcA=="),
		RecoveryIV:            ptr("cmVjb3ZlcnktaXY="),
		RecoveryFormatVersion: 1,
		RecoverySetAt:         ptr(at(3, 1)),
		ZeroKnowledge:         false,
		KeyProof:              ptr("cHJvb2YtaGFzaA==:a2V5LWNoZWNrLXZhbHVl"),
		Restorable: &broker.RestorableRecovery{
			WrappedMK:     "a2VwdC1yZWNvdmVyeS13cmFw",
			IV:            "a2VwdC1pdg==",
			FormatVersion: 1,
			SetAt:         ptr(at(11, 222222)),
			KeyCheck:      ptr("a2VwdC1rZXktY2hlY2s="),
			KeyProof:      ptr("a2VwdC1wcm9vZg==:a2VwdC1rZXktY2hlY2s="),
			TakenAt:       at(12, 333333),
		},
	}
}

// legacyVault is a row as the original service wrote it: format 1, no
// key check, never rotated, no recovery wrap.
func legacyVault(userID string) *broker.Vault {
	return &broker.Vault{
		UserID:                userID,
		WrappedMK:             ptr("4D+P+dStyVxW1bw987WfNxMzK0pqZW+oY11Bh2UZ9y+XUOjg8d6wXRmGtJLnT7jN"),
		WrapIV:                ptr("AgTOklhjA+P+5gB/"),
		FormatVersion:         broker.FormatLegacy,
		KEKID:                 "env-v1",
		CreatedAt:             at(4, 0),
		RecoveryFormatVersion: 1,
	}
}

// zkVault is a vault in zero-knowledge mode: only the recovery wrap.
func zkVault(userID string) *broker.Vault {
	v := fullVault(userID)
	v.WrappedMK, v.WrapIV, v.ZeroKnowledge = nil, nil, true
	return v
}

// normalized returns a copy of v with every time in UTC, so that stores
// returning local times compare equal to what was written.
func normalized(v *broker.Vault) broker.Vault {
	c := *v
	c.CreatedAt = c.CreatedAt.UTC()
	if c.RotatedAt != nil {
		c.RotatedAt = ptr(c.RotatedAt.UTC())
	}
	if c.RecoverySetAt != nil {
		c.RecoverySetAt = ptr(c.RecoverySetAt.UTC())
	}
	if c.Restorable != nil {
		r := *c.Restorable // a copy: callers change what normalized returns
		r.TakenAt = r.TakenAt.UTC()
		if r.SetAt != nil {
			r.SetAt = ptr(r.SetAt.UTC())
		}
		c.Restorable = &r
	}
	return c
}

func requireVaultEqual(t *testing.T, want, got *broker.Vault) {
	t.Helper()
	require.NotNil(t, got)
	require.Equal(t, normalized(want), normalized(got))
}

func insert(t *testing.T, h Harness, v *broker.Vault) {
	t.Helper()
	err := h.Store.InUserTx(t.Context(), v.UserID, func(tx broker.Tx) error {
		inserted, err := tx.VaultInsert(t.Context(), v)
		if err != nil {
			return err
		}
		require.True(t, inserted, "VaultInsert of a new user must report inserted")
		return nil
	})
	require.NoError(t, err)
}

// get reads userID's vault in a transaction of its own; nil means none.
func get(t *testing.T, h Harness, userID string) *broker.Vault {
	t.Helper()
	var got *broker.Vault
	err := h.Store.InUserTx(t.Context(), userID, func(tx broker.Tx) error {
		v, err := tx.VaultGet(t.Context(), false)
		if errors.Is(err, broker.ErrNotFound) {
			return nil
		}
		got = v
		return err
	})
	require.NoError(t, err)
	return got
}

func update(h Harness, ctx context.Context, v *broker.Vault) error {
	return h.Store.InUserTx(ctx, v.UserID, func(tx broker.Tx) error {
		return tx.VaultUpdate(ctx, v)
	})
}

func auditRows(t *testing.T, h Harness, userID string) []broker.AuditEntry {
	t.Helper()
	rows, err := h.AuditRows(t.Context(), userID)
	require.NoError(t, err)
	return rows
}
