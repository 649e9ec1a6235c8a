package sqlitestore_test

import (
	"context"
	"crypto/rand"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/kekproviders/localkek"
	"github.com/keybroker/keybroker/sqlitestore"
)

// TestCachedEnvelopeModeOnTheEmbeddedStore: data keys live in the SQLite
// file too, so a remote KEK in cached mode works on a single-node install
// and a restarted server opens what it wrapped.
func TestCachedEnvelopeModeOnTheEmbeddedStore(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	key := make([]byte, 32)
	rand.Read(key)
	// Any KEK can stand in for the remote one: the keyring only wraps
	// data keys with it.
	remote, err := localkek.New("remote-1", key, false)
	require.NoError(t, err)
	newLocal := func(id string, k []byte) (broker.KEK, error) { return localkek.New(id, k, false) }

	open := func() (*sqlitestore.Store, *broker.Service, *broker.Keyring) {
		store, err := sqlitestore.Open(ctx, sqlitestore.Config{Dir: dir})
		require.NoError(t, err)
		ring, err := broker.LoadKeyring(ctx, broker.KeyringConfig{Active: remote, Cached: []string{"remote-1"},
			DataKeys: store, NewLocalKEK: newLocal, RefreshMinInterval: time.Nanosecond})
		require.NoError(t, err)
		require.NoError(t, ring.Ready())
		svc, err := broker.New(ctx, broker.Config{Store: store, Keyring: ring})
		require.NoError(t, err)
		return store, svc, ring
	}
	store, svc, ring := open()
	res, err := svc.Init(ctx, "alice", broker.RequestMeta{})
	require.NoError(t, err)
	require.Equal(t, ring.ActiveID(), res.KEKID)
	require.NotEqual(t, "remote-1", res.KEKID, "user keys are wrapped under the data key")
	require.NoError(t, store.Close())

	store2, svc2, ring2 := open()
	defer store2.Close()
	require.Equal(t, ring.ActiveID(), ring2.ActiveID(), "the restarted server loads the same data key")
	got, err := svc2.Key(ctx, "alice", broker.RequestMeta{})
	require.NoError(t, err)
	require.Equal(t, res.MasterKey, got.MasterKey)

	list, err := store2.DataKeyList(ctx)
	require.NoError(t, err)
	require.Len(t, list, 1)
}

// TestDataKeyWrapsOnTheEmbeddedStore: a data key's other wraps are stored
// with it, added once per KEK, and listed with it.
func TestDataKeyWrapsOnTheEmbeddedStore(t *testing.T) {
	ctx := context.Background()
	store, err := sqlitestore.Open(ctx, sqlitestore.Config{Dir: t.TempDir()})
	require.NoError(t, err)
	defer store.Close()
	inserted, err := store.DataKeyInsert(ctx, broker.DataKey{ID: "dk-1", WrappedBy: "aws-eu", Wrapped: []byte("eu-1"),
		Wraps: []broker.DataKeyWrap{{KEKID: "aws-us", Wrapped: []byte("us-1")}}}, "")
	require.NoError(t, err)
	require.True(t, inserted)
	inserted, err = store.DataKeyInsert(ctx, broker.DataKey{ID: "dk-2", WrappedBy: "aws-eu", Wrapped: []byte("eu-2")}, "dk-1")
	require.NoError(t, err)
	require.True(t, inserted)

	added, err := store.DataKeyAddWrap(ctx, "dk-2", "gcp-1", []byte("gcp-2"))
	require.NoError(t, err)
	require.True(t, added)
	for _, again := range []string{"gcp-1", "aws-eu"} {
		added, err = store.DataKeyAddWrap(ctx, "dk-2", again, []byte("x"))
		require.NoError(t, err)
		require.False(t, added, "%s wraps dk-2 already", again)
	}
	added, err = store.DataKeyAddWrap(ctx, "dk-none", "gcp-1", []byte("x"))
	require.NoError(t, err)
	require.False(t, added, "no wrap for a data key that does not exist")

	list, err := store.DataKeyList(ctx)
	require.NoError(t, err)
	require.Len(t, list, 2)
	require.Equal(t, []broker.DataKeyWrap{{KEKID: "aws-eu", Wrapped: []byte("eu-1")}, {KEKID: "aws-us", Wrapped: []byte("us-1")}}, list[0].AllWraps())
	require.Equal(t, []broker.DataKeyWrap{{KEKID: "aws-eu", Wrapped: []byte("eu-2")}, {KEKID: "gcp-1", Wrapped: []byte("gcp-2")}}, list[1].AllWraps())

	deleted, err := store.DataKeyDelete(ctx, "dk-1")
	require.NoError(t, err)
	require.True(t, deleted)
	inserted, err = store.DataKeyInsert(ctx, broker.DataKey{ID: "dk-3", WrappedBy: "aws-eu", Wrapped: []byte("eu-3")}, "dk-2")
	require.NoError(t, err)
	require.True(t, inserted)
	list, err = store.DataKeyList(ctx)
	require.NoError(t, err)
	require.Equal(t, []string{"dk-2", "dk-3"}, []string{list[0].ID, list[1].ID})
	added, err = store.DataKeyAddWrap(ctx, "dk-1", "aws-us", []byte("late"))
	require.NoError(t, err)
	require.False(t, added, "no wrap is added to a deleted data key")
}
