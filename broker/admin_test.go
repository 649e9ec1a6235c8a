package broker_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/kekproviders/localkek"
	"github.com/keybroker/keybroker/sqlitestore"
)

func TestAuditCursorRoundTripsAndRefusesGarbage(t *testing.T) {
	t.Parallel()
	c := broker.AuditCursor{CreatedAt: time.Date(2026, 1, 2, 3, 4, 5, 123456000, time.UTC), ID: "abc"}
	back, err := broker.ParseAuditCursor(c.Encode())
	require.NoError(t, err)
	require.True(t, c.CreatedAt.Equal(back.CreatedAt))
	require.Equal(t, c.ID, back.ID)
	for _, bad := range []string{"", "!!!", "e30", "bnVsbA", "eyJ0IjoieCJ9"} {
		_, err := broker.ParseAuditCursor(bad)
		require.ErrorIs(t, err, broker.ErrInvalidArgument, "cursor %q", bad)
	}
}

// TestServiceAdminOperations runs the service operations over the
// embedded store: metadata without key material, pages with a cursor,
// and an idempotent erasure after which the user's key is gone.
func TestServiceAdminOperations(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	store, err := sqlitestore.Open(ctx, sqlitestore.Config{Dir: t.TempDir()})
	require.NoError(t, err)
	t.Cleanup(func() { _ = store.Close() })
	kek, err := localkek.New("k1", make([]byte, 32), true)
	require.NoError(t, err)
	ring, err := broker.NewKeyring(kek)
	require.NoError(t, err)
	svc, err := broker.New(ctx, broker.Config{Store: store, Keyring: ring})
	require.NoError(t, err)

	meta, err := svc.VaultMeta(ctx, "alice")
	require.NoError(t, err)
	require.Equal(t, &broker.VaultMeta{}, meta, "no vault: the zero metadata")

	_, err = svc.Init(ctx, "alice", broker.RequestMeta{IPAddress: "192.0.2.9"})
	require.NoError(t, err)
	for range 4 {
		_, err = svc.Key(ctx, "alice", broker.RequestMeta{})
		require.NoError(t, err)
	}
	meta, err = svc.VaultMeta(ctx, "alice")
	require.NoError(t, err)
	require.True(t, meta.Exists)
	require.True(t, meta.HasServerWrap)
	require.Equal(t, "k1", meta.KEKID)
	require.Equal(t, broker.FormatBound, meta.FormatVersion)
	require.NotNil(t, meta.CreatedAt)
	require.EqualValues(t, 5, meta.AuditRows)

	var actions []string
	cursor := ""
	for range 5 {
		page, err := svc.AuditPage(ctx, "alice", cursor, 2)
		require.NoError(t, err)
		for _, e := range page.Entries {
			actions = append(actions, fmt.Sprintf("%s:%d", e.Action, e.Status))
		}
		if page.Next == nil {
			break
		}
		cursor = page.Next.Encode()
	}
	require.Len(t, actions, 5)
	require.Contains(t, actions, "init:201")

	for _, limit := range []int{-1, broker.MaxAuditPageSize + 1} {
		_, err = svc.AuditPage(ctx, "alice", "", limit)
		require.ErrorIs(t, err, broker.ErrInvalidArgument)
	}
	_, err = svc.AuditPage(ctx, "alice", "not-a-cursor", 10)
	require.ErrorIs(t, err, broker.ErrInvalidArgument)

	res, err := svc.Erase(ctx, "alice")
	require.NoError(t, err)
	require.Equal(t, broker.EraseResult{VaultDeleted: true, AuditRowsDeleted: 5}, res)
	_, err = svc.Key(ctx, "alice", broker.RequestMeta{})
	require.ErrorIs(t, err, broker.ErrNotFound, "the erased key is gone")
	res, err = svc.Erase(ctx, "alice")
	require.NoError(t, err)
	require.Equal(t, broker.EraseResult{AuditRowsDeleted: 1}, res, "idempotent: only the failed fetch just made is left")

	_, err = svc.Erase(ctx, "")
	require.ErrorIs(t, err, broker.ErrInvalidArgument)
}
