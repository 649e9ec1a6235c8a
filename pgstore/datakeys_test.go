package pgstore_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/pgstore"
)

// dataKeyFixture is a schema with data keys dk-old and dk-new (the
// newest), used by the runtime role.
func dataKeyFixture(t *testing.T) (*env, *pgstore.Store, string) {
	t.Helper()
	e := newEnv(t)
	schema := "kb_" + randomHex(6)
	e.migrate(t, schema)
	store := e.store(t, schema)
	for _, mint := range []struct{ id, after string }{{"dk-old", ""}, {"dk-new", "dk-old"}} {
		ok, err := store.DataKeyInsert(t.Context(), broker.DataKey{ID: mint.id, WrappedBy: "kms", Wrapped: []byte("w")}, mint.after)
		require.NoError(t, err)
		require.True(t, ok)
	}
	return e, store, schema
}

func rowUnder(userID, kekID string) *broker.Vault {
	w, iv, kcv := "d3JhcHBlZA==", "", "a2N2"
	return &broker.Vault{UserID: userID, WrappedMK: &w, WrapIV: &iv, FormatVersion: broker.FormatBound, KEKID: kekID,
		KeyCheck: &kcv, CreatedAt: time.Now(), RecoveryFormatVersion: 1}
}

// waitForLockWait waits until a session waits for a lock on relation
// encryption_vaults of schema. It fails at once when finished is closed
// first: the other side did not wait.
func waitForLockWait(t *testing.T, e *env, schema string, finished <-chan struct{}) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-finished:
			t.Fatal("it went ahead without waiting for the lock")
		default:
		}
		var waiting bool
		require.NoError(t, e.admin.QueryRow(t.Context(), `SELECT EXISTS (SELECT 1 FROM pg_locks
WHERE NOT granted AND locktype = 'relation' AND relation = to_regclass($1))`,
			pgx.Identifier{schema, "encryption_vaults"}.Sanitize()).Scan(&waiting))
		if waiting {
			return
		}
		require.True(t, time.Now().Before(deadline), "no session started waiting for the lock")
		time.Sleep(5 * time.Millisecond) // polling pg_locks, not synchronising
	}
}

// TestDataKeyDeleteWaitsForAWriteInFlight: a replica with stale data keys
// has written a row under dk-old and not committed yet when the re-wrap
// job deletes dk-old. The delete must wait for that write and then see
// the row, and keep the key; deleting on the strength of a count taken
// before the commit would leave a row no key opens.
func TestDataKeyDeleteWaitsForAWriteInFlight(t *testing.T) {
	t.Parallel()
	e, store, schema := dataKeyFixture(t)
	ctx := t.Context()

	written, release, committed := make(chan struct{}), make(chan struct{}), make(chan error, 1)
	var releaseOnce sync.Once
	releaseWriter := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(releaseWriter) // a failed test must not leave the writer holding a connection
	go func() {
		committed <- store.InUserTx(ctx, "stale-writer", func(tx broker.Tx) error {
			if _, err := tx.VaultInsert(ctx, rowUnder("stale-writer", "dk-old")); err != nil {
				return err
			}
			close(written)
			<-release
			return nil
		})
	}()
	select {
	case <-written:
	case err := <-committed:
		t.Fatalf("the stale write failed before the delete: %v", err)
	}
	deleted := make(chan bool, 1)
	deleteErr := make(chan error, 1)
	finished := make(chan struct{})
	go func() {
		ok, err := store.DataKeyDelete(context.Background(), "dk-old")
		deleted <- ok
		deleteErr <- err
		close(finished)
	}()
	waitForLockWait(t, e, schema, finished)
	releaseWriter()
	require.NoError(t, <-committed)
	require.NoError(t, <-deleteErr)
	require.False(t, <-deleted, "a row committed while the delete waited keeps its key")
	list, err := store.DataKeyList(ctx)
	require.NoError(t, err)
	require.Len(t, list, 2)
}

// TestWriteWaitingOnADeleteIsRefused: the other order. The delete holds
// its lock, has checked that no row names dk-old, and records it as
// deleted; a stale replica's write arrives meanwhile and waits. Once the
// delete commits, the write must be refused, not slip in under a key that
// is gone.
func TestWriteWaitingOnADeleteIsRefused(t *testing.T) {
	t.Parallel()
	e, store, schema := dataKeyFixture(t)
	ctx := t.Context()

	// The delete's transaction, held open from an admin session: the
	// steps of pgstore's DataKeyDelete.
	deleter, err := e.admin.Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = deleter.Rollback(context.Background()) }()
	for _, stmt := range []string{
		`LOCK TABLE ` + pgx.Identifier{schema, "encryption_vaults"}.Sanitize() + ` IN SHARE MODE`,
		`DELETE FROM ` + pgx.Identifier{schema, "kek_data_keys"}.Sanitize() + ` WHERE id = 'dk-old'`,
		`INSERT INTO ` + pgx.Identifier{schema, "kek_data_keys_deleted"}.Sanitize() + ` (id) VALUES ('dk-old')`,
	} {
		_, err := deleter.Exec(ctx, stmt)
		require.NoError(t, err)
	}

	wrote := make(chan error, 1)
	finished := make(chan struct{})
	go func() {
		wrote <- store.InUserTx(ctx, "stale-writer", func(tx broker.Tx) error {
			_, err := tx.VaultInsert(ctx, rowUnder("stale-writer", "dk-old"))
			return err
		})
		close(finished)
	}()
	waitForLockWait(t, e, schema, finished)
	require.NoError(t, deleter.Commit(ctx))
	require.ErrorIs(t, <-wrote, broker.ErrDataKeyDeleted)

	var rows int
	require.NoError(t, e.admin.QueryRow(ctx, `SELECT count(*) FROM `+pgx.Identifier{schema, "encryption_vaults"}.Sanitize()+` WHERE kek_id = 'dk-old'`).Scan(&rows))
	require.Zero(t, rows)
}
