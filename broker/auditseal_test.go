package broker_test

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/internal/testkit/pgtest"
	"github.com/keybroker/keybroker/sqlitestore"
)

// TestEveryAuditPathWritesAVerifiedMAC: a server's audit rows — the
// fetch path's group commit of every case (PostgreSQL's one round trip,
// SQLite's read then append), a change's row in its transaction, a
// refusal — all carry a MAC that verifies; the runtime's sealer seals
// them; an erasure through the service leaves a mark that accounts for
// the user's rows. On both stores.
func TestEveryAuditPathWritesAVerifiedMAC(t *testing.T) {
	t.Parallel()
	for name, open := range map[string]func(t *testing.T) (broker.Store, broker.KEK){
		"postgres": func(t *testing.T) (broker.Store, broker.KEK) {
			e := newFetchEnv(t)
			return e.store, e.kek
		},
		"sqlite": func(t *testing.T) (broker.Store, broker.KEK) {
			s, err := sqlitestore.Open(t.Context(), sqlitestore.Config{Dir: t.TempDir()})
			require.NoError(t, err)
			t.Cleanup(func() { s.Close() })
			return s, newFetchEnv(t).kek
		},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			store, kek := open(t)
			ring, err := broker.NewKeyring(kek)
			require.NoError(t, err)
			seal := &broker.AuditSeal{}
			const sealEvery = 7 * time.Minute // told apart from the other loops' pauses
			sealed := make(chan struct{})
			rt, err := broker.NewRuntime(ctx, broker.RuntimeConfig{Store: store, Keyring: ring, AuditSeal: seal, AuditSealEvery: sealEvery,
				Now: func() time.Time { return time.Now().Add(time.Hour) }, // everything written has settled
				Wait: func(_ context.Context, d time.Duration) bool {
					if d == sealEvery {
						close(sealed) // after the first seal
					}
					return false
				}})
			require.NoError(t, err)
			require.NotNil(t, seal.Key(), "the key is loaded before the server serves")
			svc, err := broker.New(ctx, broker.Config{Store: store, Keyring: ring, AuditSeal: seal, GrantRecipients: newGrantKeys(t).recipients})
			require.NoError(t, err)

			meta := broker.RequestMeta{IPAddress: "192.0.2.9", UserAgent: "test"}
			for _, user := range []string{"alice", "bob"} {
				_, err := svc.Init(ctx, user, meta)
				require.NoError(t, err)
				_, err = svc.Key(ctx, user, meta)
				require.NoError(t, err)
			}
			_, err = svc.Key(ctx, "nobody", meta)
			require.ErrorIs(t, err, broker.ErrNotFound)
			_, err = svc.Rotate(ctx, "bob", meta)
			require.NoError(t, err)
			_, err = svc.Grant(ctx, "bob", grantRequest(), meta)
			require.NoError(t, err)
			require.ErrorIs(t, svc.EnableZeroKnowledge(ctx, "bob", nil, meta), broker.ErrRecoveryWrapMissing, "a refusal, audited")
			sealStore := store.(broker.AuditSealStore)
			rows, err := sealStore.AuditRows(ctx, broker.AuditRange{From: time.Unix(0, 0), To: time.Now().Add(time.Hour)})
			require.NoError(t, err)
			require.Len(t, rows, 8, "init and fetch of each, bob's rotate, grant and refusal, nobody's failed fetch")
			for _, e := range rows {
				require.NotNil(t, e.MAC, "%s %s carries a MAC", e.UserID, e.Action)
			}
			rt.Start(ctx) // one seal, then Wait stops the loops
			<-sealed
			rt.Close()
			res, err := svc.Erase(ctx, "alice")
			require.NoError(t, err)
			require.EqualValues(t, 2, res.AuditRowsDeleted)
			r, err := broker.VerifyAudit(ctx, sealStore, seal.Key(), broker.VerifyOptions{})
			require.NoError(t, err)
			require.Empty(t, r.Findings)
			require.EqualValues(t, 1, r.Checkpoints)
			require.EqualValues(t, 6, r.Verified)
			require.EqualValues(t, 2, r.Erased, "alice's rows, by the erasure's mark")
			require.Zero(t, r.SealedLate+r.Unsealed+r.CommittedLate)
		})
	}
}

// TestSealerNoticesDeletedCheckpoints is the rollback attack: a database
// writer deletes the newest checkpoint (and could delete the rows it
// sealed). The server that wrote it says so at its next seal, in its log
// — outside the database.
func TestSealerNoticesDeletedCheckpoints(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	e := newFetchEnv(t) // e.pool is a superuser's
	ring, err := broker.NewKeyring(e.kek)
	require.NoError(t, err)
	var logged strings.Builder
	var mu sync.Mutex
	log := slog.New(slog.NewTextHandler(lockedWriter{&mu, &logged}, nil))
	seal := &broker.AuditSeal{}
	const sealEvery = 7 * time.Minute
	step := make(chan bool)
	paused := make(chan struct{})
	rt, err := broker.NewRuntime(ctx, broker.RuntimeConfig{Store: e.store, Keyring: ring, AuditSeal: seal, AuditSealEvery: sealEvery,
		Logger: log, Now: func() time.Time { return time.Now().Add(time.Hour) },
		Wait: func(_ context.Context, d time.Duration) bool {
			if d != sealEvery {
				return false
			}
			paused <- struct{}{}
			return <-step
		}})
	require.NoError(t, err)
	svc, err := broker.New(ctx, broker.Config{Store: e.store, Keyring: ring, AuditSeal: seal, Logger: log})
	require.NoError(t, err)
	_, err = svc.Init(ctx, "dave", broker.RequestMeta{})
	require.NoError(t, err)

	rt.Start(ctx)
	defer rt.Close()
	<-paused // sealed checkpoint 1
	var n int
	require.NoError(t, e.pool.QueryRow(ctx, `SELECT count(*) FROM keybroker.encryption_vault_audit_checkpoints`).Scan(&n))
	require.Equal(t, 1, n)
	pgtest.Exec(t, e.pool, `DELETE FROM keybroker.encryption_vault_audit_checkpoints`)
	pgtest.Exec(t, e.pool, `DELETE FROM keybroker.encryption_vault_audit`)
	step <- true
	<-paused // the next seal
	step <- false
	mu.Lock()
	defer mu.Unlock()
	require.Contains(t, logged.String(), "AUDIT CHECKPOINTS DELETED")
}

// lockedWriter serialises the log's writes for the test to read.
type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
