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
	"strconv"
	"sync"
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

func testGetMissingIsNotFound(t *testing.T, h Harness) {
	userID := newUserID(t)
	for _, forUpdate := range []bool{false, true} {
		err := h.Store.InUserTx(t.Context(), userID, func(tx broker.Tx) error {
			v, err := tx.VaultGet(t.Context(), forUpdate)
			require.Nil(t, v)
			return err
		})
		require.ErrorIs(t, err, broker.ErrNotFound, "forUpdate=%v", forUpdate)
		require.False(t, broker.IsUnavailable(err))
	}
}

func testRoundTripEveryField(t *testing.T, h Harness) {
	want := fullVault(newUserID(t))
	insert(t, h, want)
	requireVaultEqual(t, want, get(t, h, want.UserID))
}

func testRoundTripNilPointers(t *testing.T, h Harness) {
	want := legacyVault(newUserID(t))
	insert(t, h, want)
	got := get(t, h, want.UserID)
	requireVaultEqual(t, want, got)
	require.Nil(t, got.KeyCheck)
	require.Nil(t, got.RotatedAt)
	require.Nil(t, got.RecoveryWrappedMK)
	require.Nil(t, got.RecoveryIV)
	require.Nil(t, got.RecoverySetAt)
	require.Nil(t, got.KeyProof)
	require.Nil(t, got.Restorable)
}

func testRoundTripRestorableNilFields(t *testing.T, h Harness) {
	want := zkVault(newUserID(t))
	want.KeyCheck, want.KeyProof = nil, nil
	want.Restorable.SetAt, want.Restorable.KeyCheck, want.Restorable.KeyProof = nil, nil, nil
	insert(t, h, want)
	got := get(t, h, want.UserID)
	requireVaultEqual(t, want, got)
	require.NotNil(t, got.Restorable)
	require.Nil(t, got.Restorable.SetAt)
	require.Nil(t, got.Restorable.KeyCheck)
	require.Nil(t, got.Restorable.KeyProof)

	// Emptying the slot is an update like any other.
	want.Restorable = nil
	require.NoError(t, update(h, t.Context(), want))
	require.Nil(t, get(t, h, want.UserID).Restorable)
}

func testRoundTripZeroKnowledge(t *testing.T, h Harness) {
	want := zkVault(newUserID(t))
	insert(t, h, want)
	got := get(t, h, want.UserID)
	requireVaultEqual(t, want, got)
	require.Nil(t, got.WrappedMK)
	require.Nil(t, got.WrapIV)
	require.True(t, got.ZeroKnowledge)
}

func testInsertConflictReportsFalse(t *testing.T, h Harness) {
	first := fullVault(newUserID(t))
	insert(t, h, first)

	second := legacyVault(first.UserID)
	err := h.Store.InUserTx(t.Context(), first.UserID, func(tx broker.Tx) error {
		inserted, err := tx.VaultInsert(t.Context(), second)
		require.NoError(t, err)
		require.False(t, inserted)
		// The domain reads the existing row after losing; the transaction
		// must still be usable.
		v, err := tx.VaultGet(t.Context(), false)
		require.NoError(t, err)
		requireVaultEqual(t, first, v)
		return nil
	})
	require.NoError(t, err)
	requireVaultEqual(t, first, get(t, h, first.UserID))
}

func testUpdateOverwritesEveryField(t *testing.T, h Harness) {
	before := fullVault(newUserID(t))
	insert(t, h, before)

	after := &broker.Vault{
		UserID:                before.UserID,
		WrappedMK:             ptr("bmV3LXdyYXA="),
		WrapIV:                ptr("bmV3LWl2"),
		FormatVersion:         broker.FormatLegacy,
		KEKID:                 "kek-2025",
		KeyCheck:              nil,
		CreatedAt:             at(10, 999999),
		RotatedAt:             nil,
		RecoveryWrappedMK:     nil,
		RecoveryIV:            nil,
		RecoveryFormatVersion: 2,
		RecoverySetAt:         nil,
		ZeroKnowledge:         false,
	}
	require.NoError(t, update(h, t.Context(), after))
	requireVaultEqual(t, after, get(t, h, before.UserID))

	// And back from nil to set, through the zero-knowledge transition.
	zk := zkVault(before.UserID)
	require.NoError(t, update(h, t.Context(), zk))
	requireVaultEqual(t, zk, get(t, h, before.UserID))
}

func testUpdateMissingIsNotFound(t *testing.T, h Harness) {
	v := fullVault(newUserID(t))
	err := update(h, t.Context(), v)
	require.ErrorIs(t, err, broker.ErrNotFound)
	require.Nil(t, get(t, h, v.UserID), "an update must never create a row")
}

func testRollbackOnError(t *testing.T, h Harness) {
	ctx := t.Context()
	v := fullVault(newUserID(t))
	err := h.Store.InUserTx(ctx, v.UserID, func(tx broker.Tx) error {
		inserted, err := tx.VaultInsert(ctx, v)
		require.NoError(t, err)
		require.True(t, inserted)
		require.NoError(t, tx.AuditInsert(ctx, auditEntry(v.UserID, "aborted-insert", at(5, 0))))
		return errAbort
	})
	require.ErrorIs(t, err, errAbort, "fn's error is returned as is")
	require.Nil(t, get(t, h, v.UserID))
	require.Empty(t, auditRows(t, h, v.UserID))

	// A rolled-back update leaves the previous row.
	insert(t, h, v)
	err = h.Store.InUserTx(ctx, v.UserID, func(tx broker.Tx) error {
		require.NoError(t, tx.VaultUpdate(ctx, legacyVault(v.UserID)))
		require.NoError(t, tx.AuditInsert(ctx, auditEntry(v.UserID, "aborted-update", at(5, 1))))
		return errAbort
	})
	require.ErrorIs(t, err, errAbort)
	requireVaultEqual(t, v, get(t, h, v.UserID))
	require.Empty(t, auditRows(t, h, v.UserID))
}

func testCancelledBeforeCommitStoresNothing(t *testing.T, h Harness) {
	ctx, cancel := context.WithCancel(t.Context())
	v := fullVault(newUserID(t))
	err := h.Store.InUserTx(ctx, v.UserID, func(tx broker.Tx) error {
		inserted, err := tx.VaultInsert(ctx, v)
		require.NoError(t, err)
		require.True(t, inserted)
		require.NoError(t, tx.AuditInsert(ctx, auditEntry(v.UserID, "cancelled", at(6, 0))))
		// The request goes away between the last write and the commit.
		cancel()
		return nil
	})
	require.Error(t, err)
	require.Nil(t, get(t, h, v.UserID))
	require.Empty(t, auditRows(t, h, v.UserID))
}

func testEmptyUserRefused(t *testing.T, h Harness) {
	called := false
	err := h.Store.InUserTx(t.Context(), "", func(tx broker.Tx) error {
		called = true
		return nil
	})
	require.Error(t, err)
	require.False(t, called, "fn must not run without a user scope")
}

// requireRejected asserts that writing bad over the valid stored row fails
// with an error naming constraint, both as an update and as an insert of
// a fresh user, and that nothing changed.
func requireRejected(t *testing.T, h Harness, stored *broker.Vault, bad func(v *broker.Vault), constraint string) {
	t.Helper()
	ctx := t.Context()
	insert(t, h, stored)

	v := normalized(stored)
	bad(&v)
	err := h.Store.InUserTx(ctx, stored.UserID, func(tx broker.Tx) error {
		if err := tx.VaultUpdate(ctx, &v); err != nil {
			return err
		}
		return tx.AuditInsert(ctx, auditEntry(stored.UserID, "bad-update", at(7, 0)))
	})
	require.Error(t, err)
	require.ErrorContains(t, err, constraint)
	require.NotErrorIs(t, err, broker.ErrNotFound)
	require.False(t, broker.IsUnavailable(err), "a constraint violation is a bug, not an outage: %v", err)
	requireVaultEqual(t, stored, get(t, h, stored.UserID))
	require.Empty(t, auditRows(t, h, stored.UserID), "the audit row of a failed change must roll back with it")

	fresh := normalized(stored)
	fresh.UserID = newUserID(t)
	bad(&fresh)
	err = h.Store.InUserTx(ctx, fresh.UserID, func(tx broker.Tx) error {
		_, err := tx.VaultInsert(ctx, &fresh)
		return err
	})
	require.ErrorContains(t, err, constraint)
	require.Nil(t, get(t, h, fresh.UserID))
}

func testConstraintZKWithServerWrapRejected(t *testing.T, h Harness) {
	// Zero-knowledge while the server still holds its wrap.
	requireRejected(t, h, fullVault(newUserID(t)), func(v *broker.Vault) {
		v.ZeroKnowledge = true
	}, "encryption_vaults_zk_consistency")
}

func testConstraintWrapIVPair(t *testing.T, h Harness) {
	t.Run("ServerWrapWithoutIV", func(t *testing.T) {
		requireRejected(t, h, fullVault(newUserID(t)), func(v *broker.Vault) {
			v.WrapIV = nil
		}, "encryption_vaults_wrap_iv_pair")
	})
	t.Run("ServerIVWithoutWrap", func(t *testing.T) {
		requireRejected(t, h, fullVault(newUserID(t)), func(v *broker.Vault) {
			v.WrappedMK = nil
		}, "encryption_vaults_wrap_iv_pair")
	})
	t.Run("RecoveryWrapWithoutIV", func(t *testing.T) {
		requireRejected(t, h, fullVault(newUserID(t)), func(v *broker.Vault) {
			v.RecoveryIV = nil
		}, "encryption_vaults_wrap_iv_pair")
	})
}

func testConstraintHasWrap(t *testing.T, h Harness) {
	// No wrap at all: the user would be locked out of their key.
	requireRejected(t, h, fullVault(newUserID(t)), func(v *broker.Vault) {
		v.WrappedMK, v.WrapIV, v.RecoveryWrappedMK, v.RecoveryIV = nil, nil, nil, nil
	}, "encryption_vaults_has_wrap")
}

func testConstraintFormatVersionKnown(t *testing.T, h Harness) {
	requireRejected(t, h, fullVault(newUserID(t)), func(v *broker.Vault) {
		v.FormatVersion = 3
	}, "encryption_vaults_format_version_known")
}

func testScopedToUser(t *testing.T, h Harness) {
	ctx := t.Context()
	victim := fullVault(newUserID(t))
	insert(t, h, victim)
	require.NoError(t, h.Store.InUserTx(ctx, victim.UserID, func(tx broker.Tx) error {
		return tx.AuditInsert(ctx, auditEntry(victim.UserID, "victim", at(8, 0)))
	}))
	other := newUserID(t)

	err := h.Store.InUserTx(ctx, other, func(tx broker.Tx) error {
		_, err := tx.VaultGet(ctx, false)
		return err
	})
	require.ErrorIs(t, err, broker.ErrNotFound, "another user's vault must be invisible")

	// Each write attempt in a transaction of its own: a refused write may
	// abort the transaction it ran in.
	attempts := map[string]func(tx broker.Tx) error{
		"VaultInsert": func(tx broker.Tx) error {
			_, err := tx.VaultInsert(ctx, legacyVault(victim.UserID))
			return err
		},
		"VaultUpdate": func(tx broker.Tx) error {
			return tx.VaultUpdate(ctx, legacyVault(victim.UserID))
		},
		"AuditInsert": func(tx broker.Tx) error {
			return tx.AuditInsert(ctx, auditEntry(victim.UserID, "forged", at(8, 1)))
		},
	}
	for name, attempt := range attempts {
		err := h.Store.InUserTx(ctx, other, attempt)
		require.Error(t, err, "%s of another user's row must fail", name)
	}
	requireVaultEqual(t, victim, get(t, h, victim.UserID))
	rows := auditRows(t, h, victim.UserID)
	require.Len(t, rows, 1)
	require.Equal(t, "victim", rows[0].Context)
	require.Nil(t, get(t, h, other))
}

func testConcurrentInsertOneWinner(t *testing.T, h Harness) {
	const racers = 8
	userID := newUserID(t)
	type result struct {
		mine     string
		inserted bool
		seen     string
		err      error
	}
	results := make([]result, racers)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range racers {
		wg.Go(func() {
			v := fullVault(userID)
			mine := "d3JhcC0" + strconv.Itoa(i)
			v.WrappedMK = &mine
			r := result{mine: mine}
			<-start
			r.err = h.Store.InUserTx(t.Context(), userID, func(tx broker.Tx) error {
				inserted, err := tx.VaultInsert(t.Context(), v)
				if err != nil {
					return err
				}
				r.inserted = inserted
				got, err := tx.VaultGet(t.Context(), false)
				if err != nil {
					return err
				}
				r.seen = *got.WrappedMK
				return nil
			})
			results[i] = r
		})
	}
	close(start)
	wg.Wait()

	var winner string
	for i, r := range results {
		require.NoError(t, r.err, "racer %d", i)
		if r.inserted {
			require.Empty(t, winner, "two racers report inserted")
			winner = r.mine
		}
	}
	require.NotEmpty(t, winner, "no racer reports inserted")
	for i, r := range results {
		require.Equal(t, winner, r.seen, "racer %d must read the winner's row", i)
	}
	require.Equal(t, winner, *get(t, h, userID).WrappedMK)
}

func testForUpdateSerialises(t *testing.T, h Harness) {
	const workers, rounds = 6, 5
	v := fullVault(newUserID(t))
	v.KEKID = "0" // used as a counter: every round reads, increments, writes
	insert(t, h, v)

	errs := make(chan error, workers*rounds)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			<-start
			for range rounds {
				errs <- h.Store.InUserTx(t.Context(), v.UserID, func(tx broker.Tx) error {
					cur, err := tx.VaultGet(t.Context(), true)
					if err != nil {
						return err
					}
					n, err := strconv.Atoi(cur.KEKID)
					if err != nil {
						return err
					}
					cur.KEKID = strconv.Itoa(n + 1)
					return tx.VaultUpdate(t.Context(), cur)
				})
			}
		})
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.Equal(t, strconv.Itoa(workers*rounds), get(t, h, v.UserID).KEKID, "an increment was lost: FOR UPDATE did not serialise")
}

func auditEntry(userID, note string, createdAt time.Time) *broker.AuditEntry {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return &broker.AuditEntry{
		ID:        "audit-" + hex.EncodeToString(b),
		UserID:    userID,
		Action:    broker.ActionFetch,
		IPAddress: "203.0.113.7",
		UserAgent: "Mozilla/5.0 (storetest)",
		Context:   note,
		Status:    200,
		CreatedAt: createdAt,
	}
}

func testAuditRoundTrip(t *testing.T, h Harness) {
	ctx := t.Context()
	userID := newUserID(t)
	full := auditEntry(userID, "unknown-kek:kek-2019", at(9, 123456))
	full.Action, full.Status = broker.ActionFailedFetch, 503
	// Request metadata is optional: empty strings come back empty.
	bare := &broker.AuditEntry{ID: full.ID + "-bare", UserID: userID, Action: broker.ActionKEKRewrap, Status: 200, CreatedAt: at(9, 123457)}

	require.NoError(t, h.Store.InUserTx(ctx, userID, func(tx broker.Tx) error {
		if err := tx.AuditInsert(ctx, full); err != nil {
			return err
		}
		return tx.AuditInsert(ctx, bare)
	}))

	rows := auditRows(t, h, userID)
	require.Len(t, rows, 2)
	for i, want := range []*broker.AuditEntry{full, bare} {
		got := rows[i]
		got.CreatedAt = got.CreatedAt.UTC()
		require.Equal(t, *want, got)
	}
}

func testFormat1ClosedOnFreshStore(t *testing.T, h Harness) {
	st, err := h.Store.Format1State(t.Context())
	require.NoError(t, err)
	require.True(t, st.Closed, "a store that never held a format-1 row starts closed")
	require.False(t, st.ClosedAt.IsZero())
	require.NotEmpty(t, st.ClosedBy)
}

func testFormat1ClosesOnlyWithoutFormat1Rows(t *testing.T, h Harness) {
	require.NotNil(t, h.ReopenFormat1, "Harness.ReopenFormat1 is required")
	ctx := t.Context()
	h.ReopenFormat1(t)
	f1 := h.Store
	st, err := f1.Format1State(ctx)
	require.NoError(t, err)
	require.Equal(t, broker.Format1State{}, st)

	legacy := legacyVault(newUserID(t))
	insert(t, h, legacy)
	zk := zkVault(newUserID(t))
	zk.FormatVersion = broker.FormatLegacy // a zero-knowledge row the original service wrote
	insert(t, h, zk)
	st, err = f1.Format1Close(ctx, "runner-a")
	require.NoError(t, err)
	require.False(t, st.Closed, "a format-1 server wrap is left")

	upgraded := *legacy
	upgraded.FormatVersion, upgraded.WrapIV, upgraded.KEKID = broker.FormatBound, ptr(""), "kek-2024"
	require.NoError(t, update(h, ctx, &upgraded))
	before := time.Now().Add(-time.Minute)
	st, err = f1.Format1Close(ctx, "runner-a")
	require.NoError(t, err)
	require.True(t, st.Closed, "only a zero-knowledge format-1 row is left: no server wrap to open")
	require.Equal(t, "runner-a", st.ClosedBy)
	require.True(t, st.ClosedAt.After(before) && st.ClosedAt.Before(time.Now().Add(time.Minute)), "closed at %s", st.ClosedAt)

	again, err := f1.Format1Close(ctx, "runner-b")
	require.NoError(t, err)
	require.Equal(t, st.ClosedBy, again.ClosedBy, "the first closing stays recorded")
	require.True(t, st.ClosedAt.Equal(again.ClosedAt))

	// A format-1 row written afterwards does not reopen it.
	insert(t, h, legacyVault(newUserID(t)))
	require.NoError(t, update(h, ctx, legacyVault(legacy.UserID)))
	read, err := f1.Format1State(ctx)
	require.NoError(t, err)
	require.True(t, read.Closed)
	require.Equal(t, "runner-a", read.ClosedBy)
	require.True(t, st.ClosedAt.Equal(read.ClosedAt))
}
