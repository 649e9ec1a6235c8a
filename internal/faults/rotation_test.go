package faults_test

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/internal/faults"
)

// A KEK rotation: rows made under kekOld, then servers with kekNew active
// and kekOld decrypt-only, whose background re-wrap job moves the rows.
const (
	kekOldID = "kek-old"
	kekNewID = "kek-new"
)

// rotation is a database with vaults under the old KEK and the
// environments of servers before, during and after the rotation.
type rotation struct {
	iss     *issuer
	admin   *pgx.Conn
	bin     string
	before  []string // old KEK active
	during  []string // new KEK active, old decrypt-only, re-wrap job on
	after   []string // new KEK only
	initial map[string][]byte
}

// newRotation makes users vaults under the old KEK through a server of
// that configuration, which it then stops.
func newRotation(t *testing.T, ctx context.Context, users int, rewrap ...string) *rotation {
	t.Helper()
	dbURL, admin := sharedDatabase(t)
	r := &rotation{iss: newIssuer(t), admin: admin, bin: faults.Keybroker(t), initial: map[string][]byte{}}
	old, next := newKEKText(), newKEKText()
	keys := []string{"OLD_KEK=" + old, "NEW_KEK=" + next}
	r.before = serverEnv(dbURL, r.iss, append(keys, "KEYBROKER_KEK=env://OLD_KEK?id="+kekOldID, "KEYBROKER_REWRAP=false")...)
	r.during = serverEnv(dbURL, r.iss, append(append(keys, "KEYBROKER_KEK=env://NEW_KEK?id="+kekNewID,
		"KEYBROKER_KEK_RETIRED=env://OLD_KEK?id="+kekOldID, "KEYBROKER_REWRAP=true", "KEYBROKER_REWRAP_INTERVAL=1s"), rewrap...)...)
	r.after = serverEnv(dbURL, r.iss, append(keys, "KEYBROKER_KEK=env://NEW_KEK?id="+kekNewID, "KEYBROKER_REWRAP=false")...)

	srv := faults.StartServer(t, r.bin, r.before)
	client := faults.NewClient(srv.URL)
	defer client.Close()
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make(chan error, users)
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < users; i += 8 {
				user := fmt.Sprintf("rot-user-%03d", i)
				c := do(ctx, client, r.iss, t, "seed-"+user, user, "init", nil)
				if c.err != nil || c.status != http.StatusOK {
					errs <- fmt.Errorf("seed %s: %v %d %s", user, c.err, c.status, c.code)
					return
				}
				mu.Lock()
				r.initial[user] = c.mk
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	srv.Stop(t)
	require.Equal(t, users, r.onKEK(t, ctx, kekOldID))
	return r
}

// onKEK counts the rows a KEK id wraps (read as the superuser: all users).
func (r *rotation) onKEK(t *testing.T, ctx context.Context, kekID string) int {
	t.Helper()
	var n int
	require.NoError(t, r.admin.QueryRow(ctx, "SELECT count(*) FROM "+pgx.Identifier{schema, "encryption_vaults"}.Sanitize()+
		" WHERE kek_id = $1 AND wrapped_mk IS NOT NULL", kekID).Scan(&n))
	return n
}

// requireRotated checks the end state of a rotation: no row left on the
// old KEK, a server with only the new KEK starts (it refuses to while
// rows need a retired one) and opens every vault, the CHECK constraints
// hold, what the load was told is what is stored, and every request
// acknowledged has its audit row.
func (r *rotation) requireRotated(t *testing.T, ctx context.Context, calls []call) {
	t.Helper()
	require.Zero(t, r.onKEK(t, ctx, kekOldID), "rows are left on the old KEK")
	require.NoError(t, faults.CheckVaultConstraints(ctx, r.admin, schema))
	for _, c := range calls {
		if c.err == nil {
			require.Less(t, c.status, 500, "%s %s of %s: %d %s", c.op, c.id, c.user, c.status, c.code)
		}
	}
	requireAcknowledgedAudited(t, calls, auditByAgent(t, ctx, r.admin))
	models := map[string]*vaultModel{}
	for user, mk := range r.initial {
		models[user] = &vaultModel{mk: mk}
	}
	for _, c := range calls {
		require.NoError(t, models[c.user].observe(c))
	}
	for user, m := range models {
		m.requireRowMatches(t, ctx, r.admin, user)
	}
	// Untouched users keep the key they were given, moved exactly once.
	moves := map[string]int{}
	rows, err := r.admin.Query(ctx, "SELECT user_id FROM "+pgx.Identifier{schema, "encryption_vault_audit"}.Sanitize()+" WHERE action = 'kek_rewrap'")
	require.NoError(t, err)
	for rows.Next() {
		var user string
		require.NoError(t, rows.Scan(&user))
		moves[user]++
	}
	require.NoError(t, rows.Err())
	for user := range r.initial {
		require.LessOrEqual(t, moves[user], 1, "%s was re-wrapped twice", user)
	}

	srv := faults.StartServer(t, r.bin, r.after)
	client := faults.NewClient(srv.URL)
	defer client.Close()
	requireEveryVaultUnwraps(t, ctx, client, r.iss, r.admin)
	for user, mk := range r.initial {
		if moves[user] == 1 && models[user].mk != nil && string(models[user].mk) == string(mk) && !models[user].mkUnknown {
			res := do(ctx, client, r.iss, t, "after-"+user, user, "key", nil)
			require.Equal(t, http.StatusOK, res.status, user)
			if res.mk != nil {
				require.Equal(t, mk, res.mk, "%s: the re-wrap changed the key", user)
			}
		}
	}
}

// TestSIGKILLDuringRewrap kills `keybroker serve` with SIGKILL twice in the
// middle of its background re-wrap of 300 vaults (rate-limited so that the
// kill lands mid-run) while clients keep writing to some of the users,
// then lets a restarted server finish. Every vault then opens under the
// new KEK alone, the CHECK constraints hold, no acknowledged write was
// lost and no row was moved twice. (`keybroker rewrap` killed on an idle
// database is cmd/keybroker's TestRewrapCommandKilledAndRestarted.)
func TestSIGKILLDuringRewrap(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	const users = 300
	r := newRotation(t, ctx, users, "KEYBROKER_REWRAP_RATE=120", "KEYBROKER_REWRAP_BATCH=10")
	writers := []string{"rot-user-000", "rot-user-001", "rot-user-002", "rot-user-003"}
	sequence := []string{"key", "rotate", "recovery-set", "key", "zk-on", "key", "zk-off", "recovery-clear"}

	srv := faults.StartServer(t, r.bin, r.during)
	servers := []*faults.Server{srv}
	l := startLoad(t, ctx, r.iss, []*faults.Client{faults.NewClient(srv.URL)}, writers, sequence)
	for kill := range 2 {
		left := r.onKEK(t, ctx, kekOldID)
		waitUntil(t, time.Minute, "the re-wrap job makes progress", func() bool {
			n := r.onKEK(t, ctx, kekOldID)
			return n < left-15 && n > 0
		})
		srv.Kill(t)
		t.Logf("kill %d with %d rows left on the old KEK", kill+1, r.onKEK(t, ctx, kekOldID))
		srv = faults.StartServer(t, r.bin, r.during)
		servers = append(servers, srv)
		l.retarget(faults.NewClient(srv.URL))
	}
	waitUntil(t, 2*time.Minute, "the re-wrap job finishes", func() bool { return r.onKEK(t, ctx, kekOldID) == 0 })
	waitUntil(t, time.Minute, "the writers are acknowledged", func() bool { return l.acknowledged() >= 40 })
	calls := l.finish()
	srv.Stop(t)
	r.requireRotated(t, ctx, calls)
	requireLogsHoldNoSecrets(t, r.iss, calls, servers...)
}

// TestReplicasDuringKEKRotation runs three `keybroker serve` processes on
// one PostgreSQL while the KEK rotates: each has the new KEK active and
// the old one decrypt-only, and their background re-wrap jobs (one runner
// at a time across them) move 200 vaults while a mixed load — fetches,
// rotations, recovery wraps, zero-knowledge on and off, inits — goes to
// the replicas in turn, so that consecutive requests of a user hit
// different processes. No answer contradicts an earlier one (a fetch never
// returns a key other than the user's current one, whichever replica
// wrote it); afterwards every vault opens under the new KEK alone, no row
// was moved twice, and every acknowledged request has its audit row.
func TestReplicasDuringKEKRotation(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	const users = 200
	r := newRotation(t, ctx, users, "KEYBROKER_REWRAP_RATE=100", "KEYBROKER_REWRAP_BATCH=10")
	var replicas []*faults.Server
	var clients []*faults.Client
	for range 3 {
		srv := faults.StartServer(t, r.bin, r.during)
		replicas = append(replicas, srv)
		clients = append(clients, faults.NewClient(srv.URL))
	}
	var active []string
	for i := 0; i < 12; i++ {
		active = append(active, fmt.Sprintf("rot-user-%03d", i*13))
	}
	active = append(active, "rot-newcomer-1", "rot-newcomer-2")
	sequence := []string{"key", "rotate", "key", "recovery-set", "zk-on", "key", "init", "zk-off", "key", "recovery-clear"}
	l := startLoad(t, ctx, r.iss, clients, active, sequence)
	waitUntil(t, 2*time.Minute, "the re-wrap job finishes", func() bool { return r.onKEK(t, ctx, kekOldID) == 0 })
	waitUntil(t, time.Minute, "the load is acknowledged", func() bool { return l.acknowledged() >= 150 })
	calls := l.finish()
	for _, srv := range replicas {
		srv.Stop(t)
	}
	for _, c := range clients {
		c.Close()
	}
	for _, user := range []string{"rot-newcomer-1", "rot-newcomer-2"} {
		r.initial[user] = nil
	}
	r.requireRotated(t, ctx, calls)
	requireLogsHoldNoSecrets(t, r.iss, calls, replicas...)
	t.Logf("%d requests across 3 replicas during the rotation", len(calls))
}
