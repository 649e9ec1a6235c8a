package storetest

import (
	"context"
	"strconv"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
)

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
