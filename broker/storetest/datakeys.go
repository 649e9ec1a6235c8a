package storetest

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
)

// RunDataKeys runs the data-key part of the contract (cached envelope
// mode) on stores of newHarness, each subtest on an empty one: the order
// of data keys is the store's, a data key is inserted only after the
// newest its minter saw (so replicas minting at once make one), a re-wrap
// is compare-and-swap, and a deleted data key is never named by a row with
// a server wrap again.
func RunDataKeys(t *testing.T, newHarness NewHarness) {
	run(t, newHarness, []subtest{
		{"InsertOnlyAfterTheNewest", true, testDataKeyInsertOnlyAfterNewest},
		{"ConcurrentMintsMakeOneKey", true, testDataKeyConcurrentMintsMakeOne},
		{"InsertOrderIsTheListOrder", true, testDataKeyInsertOrderIsListOrder},
		{"RewrapOnlyFromTheWrapper", true, testDataKeyRewrapOnlyFromWrapper},
		{"DeleteOnlyUnneededKeys", true, testDataKeyDeleteOnlyUnneeded},
		{"DeletedKeyRefusesWrites", true, testDataKeyDeletedRefusesWrites},
	})
}

func dataKey(id string) broker.DataKey {
	return broker.DataKey{ID: id, WrappedBy: "kms-1", Wrapped: []byte("wrapped " + id)}
}

func dataKeyIDs(t *testing.T, h Harness) []string {
	t.Helper()
	list, err := h.Store.DataKeyList(t.Context())
	require.NoError(t, err)
	ids := make([]string, len(list))
	for i, dk := range list {
		ids[i] = dk.ID
	}
	return ids
}

func mint(t *testing.T, h Harness, id, after string) bool {
	t.Helper()
	ok, err := h.Store.DataKeyInsert(t.Context(), dataKey(id), after)
	require.NoError(t, err)
	return ok
}

func testDataKeyInsertOnlyAfterNewest(t *testing.T, h Harness) {
	require.False(t, mint(t, h, "dk-a", "dk-none"), "an empty table has no newest dk-none")
	require.True(t, mint(t, h, "dk-a", ""))
	require.False(t, mint(t, h, "dk-b", ""), "the table is not empty any more")
	require.True(t, mint(t, h, "dk-b", "dk-a"))
	require.False(t, mint(t, h, "dk-c", "dk-a"), "dk-a is not the newest any more")
	require.Equal(t, []string{"dk-a", "dk-b"}, dataKeyIDs(t, h))
	list, err := h.Store.DataKeyList(t.Context())
	require.NoError(t, err)
	require.Equal(t, []byte("wrapped dk-b"), list[1].Wrapped)
	require.Equal(t, "kms-1", list[1].WrappedBy)
}

func testDataKeyConcurrentMintsMakeOne(t *testing.T, h Harness) {
	require.True(t, mint(t, h, "dk-first", ""))
	const minters = 8
	var wg sync.WaitGroup
	won := make(chan string, minters)
	start := make(chan struct{})
	for i := range minters {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			id := "dk-" + string(rune('a'+i))
			ok, err := h.Store.DataKeyInsert(context.Background(), dataKey(id), "dk-first")
			if err == nil && ok {
				won <- id
			}
			if err != nil {
				won <- "error: " + err.Error()
			}
		}()
	}
	close(start)
	wg.Wait()
	close(won)
	var winners []string
	for id := range won {
		winners = append(winners, id)
	}
	require.Len(t, winners, 1, "of minters that saw the same newest, exactly one inserts")
	require.Equal(t, []string{"dk-first", winners[0]}, dataKeyIDs(t, h))
}

func testDataKeyInsertOrderIsListOrder(t *testing.T, h Harness) {
	// The first minter's clock is far ahead; the next ones' are behind it,
	// or not given: each key still sorts after the one before.
	future := dataKey("dk-future")
	future.CreatedAt = time.Now().Add(100 * 24 * time.Hour)
	ok, err := h.Store.DataKeyInsert(t.Context(), future, "")
	require.NoError(t, err)
	require.True(t, ok)
	behind := dataKey("dk-behind")
	behind.CreatedAt = time.Now().Add(-time.Hour)
	ok, err = h.Store.DataKeyInsert(t.Context(), behind, "dk-future")
	require.NoError(t, err)
	require.True(t, ok)
	require.True(t, mint(t, h, "dk-unset", "dk-behind"))
	list, err := h.Store.DataKeyList(t.Context())
	require.NoError(t, err)
	require.Equal(t, []string{"dk-future", "dk-behind", "dk-unset"}, dataKeyIDs(t, h))
	require.WithinDuration(t, future.CreatedAt, list[0].CreatedAt, time.Millisecond, "the minter's clock is kept when it is later")
	for i := 1; i < len(list); i++ {
		require.True(t, list[i].CreatedAt.After(list[i-1].CreatedAt), "strictly later than the one before")
	}
}

func testDataKeyRewrapOnlyFromWrapper(t *testing.T, h Harness) {
	ctx := t.Context()
	require.True(t, mint(t, h, "dk-a", ""))
	moved, err := h.Store.DataKeyRewrap(ctx, "dk-a", "not-the-wrapper", []byte("rewrapped"), "kms-2")
	require.NoError(t, err)
	require.False(t, moved, "the compare-and-swap refuses a stale wrapper")
	moved, err = h.Store.DataKeyRewrap(ctx, "dk-unknown", "kms-1", []byte("rewrapped"), "kms-2")
	require.NoError(t, err)
	require.False(t, moved)
	moved, err = h.Store.DataKeyRewrap(ctx, "dk-a", "kms-1", []byte("rewrapped"), "kms-2")
	require.NoError(t, err)
	require.True(t, moved)
	list, err := h.Store.DataKeyList(ctx)
	require.NoError(t, err)
	require.Len(t, list, 1)
	require.Equal(t, []string{"dk-a", "kms-2", "rewrapped"}, []string{list[0].ID, list[0].WrappedBy, string(list[0].Wrapped)})
}

func vaultUnder(userID, kekID string) *broker.Vault {
	v := fullVault(userID)
	v.KEKID = kekID
	return v
}

func testDataKeyDeleteOnlyUnneeded(t *testing.T, h Harness) {
	ctx := t.Context()
	require.True(t, mint(t, h, "dk-old", ""))
	require.True(t, mint(t, h, "dk-used", "dk-old"))
	require.True(t, mint(t, h, "dk-new", "dk-used"))
	insert(t, h, vaultUnder(newUserID(t), "dk-used"))
	// A zero-knowledge row keeps the kek_id it had; it holds no server
	// wrap and needs no key.
	insert(t, h, func() *broker.Vault { v := zkVault(newUserID(t)); v.KEKID = "dk-old"; return v }())

	deleted, err := h.Store.DataKeyDelete(ctx, "dk-new")
	require.NoError(t, err)
	require.False(t, deleted, "the newest is never deleted")
	deleted, err = h.Store.DataKeyDelete(ctx, "dk-used")
	require.NoError(t, err)
	require.False(t, deleted, "a key a row needs is never deleted")
	deleted, err = h.Store.DataKeyDelete(ctx, "dk-old")
	require.NoError(t, err)
	require.True(t, deleted)
	deleted, err = h.Store.DataKeyDelete(ctx, "dk-old")
	require.NoError(t, err)
	require.False(t, deleted, "already gone")
	deleted, err = h.Store.DataKeyDelete(ctx, "dk-unknown")
	require.NoError(t, err)
	require.False(t, deleted)
	require.Equal(t, []string{"dk-used", "dk-new"}, dataKeyIDs(t, h))
}

func testDataKeyDeletedRefusesWrites(t *testing.T, h Harness) {
	ctx := t.Context()
	require.True(t, mint(t, h, "dk-gone", ""))
	require.True(t, mint(t, h, "dk-new", "dk-gone"))
	deleted, err := h.Store.DataKeyDelete(ctx, "dk-gone")
	require.NoError(t, err)
	require.True(t, deleted)

	// A stale writer inserts a row under the deleted key: refused.
	stale := vaultUnder(newUserID(t), "dk-gone")
	err = h.Store.InUserTx(ctx, stale.UserID, func(tx broker.Tx) error {
		_, err := tx.VaultInsert(ctx, stale)
		return err
	})
	require.ErrorIs(t, err, broker.ErrDataKeyDeleted)
	require.Nil(t, get(t, h, stale.UserID), "nothing stored")

	// Or moves an existing row to it: refused, the row is as it was.
	row := vaultUnder(newUserID(t), "dk-new")
	insert(t, h, row)
	moved := *row
	moved.KEKID = "dk-gone"
	require.ErrorIs(t, update(h, ctx, &moved), broker.ErrDataKeyDeleted)
	requireVaultEqual(t, row, get(t, h, row.UserID))

	// Rows without a server wrap under it, and rows under other keys,
	// are written as usual.
	zk := zkVault(newUserID(t))
	zk.KEKID = "dk-gone"
	insert(t, h, zk)
	row.RotatedAt = ptr(at(9, 9))
	require.NoError(t, update(h, ctx, row))
	insert(t, h, vaultUnder(newUserID(t), "env-v1"))
}
