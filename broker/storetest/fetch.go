package storetest

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
)

// The fetch path: VaultRead, and the batches of AuditAppend and
// VaultFetch.

func testVaultReadSeesOnlyItsUser(t *testing.T, h Harness) {
	users := []string{newUserID(t), newUserID(t)}
	for _, user := range users {
		insert(t, h, vaultWithKEK(user, "kek-of-"+user))
	}
	// Alternating reads: on a store that reuses connections, a scope left
	// behind by one read would show up as the other user's row.
	for i := range 20 {
		user := users[i%2]
		v, err := h.Store.VaultRead(t.Context(), user)
		require.NoError(t, err)
		require.Equal(t, user, v.UserID)
		require.Equal(t, "kek-of-"+user, v.KEKID)
	}
	v, err := h.Store.VaultRead(t.Context(), users[0])
	require.NoError(t, err)
	requireVaultEqual(t, vaultWithKEK(users[0], "kek-of-"+users[0]), v)

	_, err = h.Store.VaultRead(t.Context(), newUserID(t))
	require.ErrorIs(t, err, broker.ErrNotFound)
	require.False(t, broker.IsUnavailable(err))
	_, err = h.Store.VaultRead(t.Context(), "")
	require.ErrorIs(t, err, broker.ErrInvalidArgument)
}

func vaultWithKEK(userID, kekID string) *broker.Vault {
	v := fullVault(userID)
	v.KEKID = kekID
	return v
}

func fetchEntry(id, userID string) *broker.AuditEntry {
	return &broker.AuditEntry{ID: id, UserID: userID, Action: broker.ActionFetch, Status: 200, CreatedAt: time.Now()}
}

func testAuditAppendManyUsers(t *testing.T, h Harness) {
	ctx := t.Context()
	prefix := newUserID(t)
	var entries []*broker.AuditEntry
	for i := range 50 {
		entries = append(entries, fetchEntry(fmt.Sprintf("%s-id-%d", prefix, i), fmt.Sprintf("%s-%d", prefix, i%7)))
	}
	entries[0].IPAddress, entries[0].UserAgent, entries[0].Context = "203.0.113.9", "ua", "a-note"
	require.NoError(t, h.Store.AuditAppend(ctx, entries))
	for u := range 7 {
		rows := auditRows(t, h, fmt.Sprintf("%s-%d", prefix, u))
		want := 50 / 7
		if u < 50%7 {
			want++
		}
		require.Len(t, rows, want)
	}
	rows := auditRows(t, h, entries[0].UserID)
	var first broker.AuditEntry
	for _, r := range rows {
		if r.ID == entries[0].ID {
			first = r
		}
	}
	require.Equal(t, []string{"203.0.113.9", "ua", "a-note"}, []string{first.IPAddress, first.UserAgent, first.Context})
	require.NoError(t, h.Store.AuditAppend(ctx, nil), "an empty batch is nothing to do")
}

func testAuditAppendAllOrNothing(t *testing.T, h Harness) {
	ctx := t.Context()
	user, taken := newUserID(t), newUserID(t)
	first := fetchEntry(taken, user)
	require.NoError(t, h.Store.AuditAppend(ctx, []*broker.AuditEntry{first}))

	// A key already taken fails the batch: none of its rows is kept. The
	// key is the id and the time (a partitioned PostgreSQL table's
	// primary key must hold its partition key).
	other := newUserID(t)
	again := fetchEntry(taken, other)
	again.CreatedAt = first.CreatedAt
	bad := []*broker.AuditEntry{fetchEntry(newUserID(t), other), again}
	err := h.Store.AuditAppend(ctx, bad)
	require.Error(t, err)
	require.False(t, broker.IsUnavailable(err), "a bad row is not an outage: %v", err)
	var item *broker.BatchItemError
	if errors.As(err, &item) {
		require.Equal(t, 1, item.Index, "the entry whose id is taken")
	}
	require.Empty(t, auditRows(t, h, other))
	// Without it the others go.
	require.NoError(t, h.Store.AuditAppend(ctx, bad[:1]))
	require.Len(t, auditRows(t, h, other), 1)

	err = h.Store.AuditAppend(ctx, []*broker.AuditEntry{fetchEntry(newUserID(t), "")})
	require.ErrorIs(t, err, broker.ErrInvalidArgument)
}

// fetchOutcomes are distinct rows per case, so that the suite sees which
// case a store recorded.
var fetchOutcomes = [broker.FetchDeferred]broker.FetchOutcome{
	broker.FetchMissing:       {Action: broker.ActionFailedFetch, Status: 404, Context: "missing"},
	broker.FetchZeroKnowledge: {Action: broker.ActionFetch, Status: 200, Context: "zk"},
	broker.FetchOpenable:      {Action: broker.ActionFetch, Status: 200},
}

// vaultFetcher returns the store's VaultFetcher, skipping the subtest on
// a store without one (an optional ability).
func vaultFetcher(t *testing.T, h Harness) broker.VaultFetcher {
	t.Helper()
	f, ok := h.Store.(broker.VaultFetcher)
	if !ok {
		t.Skipf("%T has no VaultFetcher (an optional ability): the Service reads with VaultRead and records with AuditAppend", h.Store)
	}
	return f
}

func testVaultFetchRecordsEachCase(t *testing.T, h Harness) {
	fetcher := vaultFetcher(t, h)
	ctx := t.Context()
	local, remote, zk, nobody := newUserID(t), newUserID(t), newUserID(t), newUserID(t)
	insert(t, h, vaultWithKEK(local, "k-local"))
	insert(t, h, vaultWithKEK(remote, "k-remote"))
	insert(t, h, func() *broker.Vault { v := zkVault(zk); v.KEKID = "k-local"; return v }())

	users := []string{local, remote, zk, nobody, local}
	b := &broker.FetchBatch{Openable: []string{"k-local", "k-other"}, Outcomes: fetchOutcomes}
	for i, user := range users {
		b.Fetches = append(b.Fetches, &broker.Fetch{Audit: &broker.AuditEntry{
			ID: fmt.Sprintf("%s-fetch-%d", user, i), UserID: user, IPAddress: "203.0.113.9", UserAgent: "ua", CreatedAt: time.Now()}})
	}
	require.NoError(t, fetcher.VaultFetch(ctx, b))

	wantCase := map[string]broker.FetchCase{local: broker.FetchOpenable, remote: broker.FetchDeferred,
		zk: broker.FetchZeroKnowledge, nobody: broker.FetchMissing}
	for _, f := range b.Fetches {
		user := f.Audit.UserID
		if user == nobody {
			require.Nil(t, f.Vault)
		} else {
			require.NotNil(t, f.Vault, user)
			require.Equal(t, user, f.Vault.UserID, "each read runs under its own user's scope")
		}
		require.Equal(t, wantCase[user], b.Case(f.Vault), user)
	}
	requireVaultEqual(t, vaultWithKEK(remote, "k-remote"), b.Fetches[1].Vault)

	recorded := auditRows(t, h, local)
	require.Len(t, recorded, 2, "one row per fetch")
	for _, r := range recorded {
		require.Equal(t, broker.ActionFetch, r.Action)
		require.Equal(t, 200, r.Status)
		require.Empty(t, r.Context)
		require.Equal(t, "203.0.113.9", r.IPAddress)
		require.Equal(t, "ua", r.UserAgent)
	}
	require.Empty(t, auditRows(t, h, remote), "a remote unwrap is recorded by the caller, after it")
	recorded = auditRows(t, h, zk)
	require.Len(t, recorded, 1)
	require.Equal(t, "zk", recorded[0].Context)
	recorded = auditRows(t, h, nobody)
	require.Len(t, recorded, 1)
	require.Equal(t, broker.ActionFailedFetch, recorded[0].Action)
	require.Equal(t, 404, recorded[0].Status)
	require.Equal(t, "missing", recorded[0].Context)
}

func testVaultFetchAllOrNothing(t *testing.T, h Harness) {
	fetcher := vaultFetcher(t, h)
	ctx := t.Context()
	zk, local := newUserID(t), newUserID(t)
	insert(t, h, zkVault(zk))
	insert(t, h, vaultWithKEK(local, "k-local"))
	taken := fetchEntry(newUserID(t), local)
	require.NoError(t, h.Store.AuditAppend(ctx, []*broker.AuditEntry{taken}))

	// An audit key (id and time) already taken fails the batch, and
	// neither fetch is recorded.
	bad := &broker.FetchBatch{Openable: []string{"k-local"}, Outcomes: fetchOutcomes, Fetches: []*broker.Fetch{
		{Audit: &broker.AuditEntry{ID: newUserID(t), UserID: zk, CreatedAt: time.Now()}},
		{Audit: &broker.AuditEntry{ID: taken.ID, UserID: local, CreatedAt: taken.CreatedAt}},
	}}
	err := fetcher.VaultFetch(ctx, bad)
	var item *broker.BatchItemError
	require.ErrorAs(t, err, &item, "the store says which fetch failed")
	require.Equal(t, 1, item.Index, "the fetch whose audit id is taken")
	require.False(t, broker.IsUnavailable(err))
	require.Nil(t, bad.Fetches[0].Vault, "no vault of a failed batch is handed out")
	require.Empty(t, auditRows(t, h, zk))

	// Without it the other runs, and is recorded once.
	bad.Fetches = bad.Fetches[:1]
	require.NoError(t, fetcher.VaultFetch(ctx, bad))
	require.Len(t, auditRows(t, h, zk), 1)

	empty := &broker.FetchBatch{Outcomes: fetchOutcomes, Fetches: []*broker.Fetch{{Audit: &broker.AuditEntry{ID: newUserID(t), CreatedAt: time.Now()}}}}
	err = fetcher.VaultFetch(ctx, empty)
	require.ErrorIs(t, err, broker.ErrInvalidArgument)
	require.ErrorAs(t, err, &item)
	require.Zero(t, item.Index)
}
