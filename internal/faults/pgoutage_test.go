package faults_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/internal/faults"
)

// requestTimeout is vaultapi's default Config.RequestTimeout, which
// `keybroker serve` uses: no request may take longer during an outage.
const requestTimeout = 10 * time.Second

// Phases of an outage test, as a request saw them when it was sent and
// when its answer came.
const (
	phaseUp int32 = iota
	phaseStopping
	phaseDown
	phaseStarting
	phaseRecovered
)

// TestPostgresRestartWhileRequestsFlow stops a private PostgreSQL cluster
// as a crash would (pg_ctl stop -m immediate) under a running `keybroker
// serve` with requests in flight, then starts it again. During the outage
// every request is answered 503 STORE_UNAVAILABLE within the request
// timeout and /readyz reports not ready; after the restart the same
// process serves again by itself and /readyz is ready. Afterwards every
// request that got a 2xx is durable: its audit row exists (exactly one),
// no acknowledged key or recovery wrap was lost, the CHECK constraints
// hold and every vault unwraps.
func TestPostgresRestartWhileRequestsFlow(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	pg := faults.StartPostgres(t)
	dbURL := strings.Replace(pg.NewRuntimeDatabase(t, "keybroker"), "connect_timeout=5", "connect_timeout=2", 1)
	iss := newIssuer(t)
	srv := faults.StartServer(t, faults.Keybroker(t), serverEnv(dbURL, iss, "MANA_AUTH_KEK="+newKEKText()))
	client := faults.NewClient(srv.URL)
	defer client.Close()
	requireReady(t, ctx, client, true)

	var phase atomic.Int32
	type sent struct {
		call
		sentIn, doneIn int32
	}
	results := make(chan sent, 4096)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	const workers = 4
	sequence := []string{"rotate", "key", "recovery-set", "key", "status"}
	// Every user has a vault before the outage can begin: otherwise a
	// worker that gets no rotate through before the database stops would
	// rightly be told 404 by a later fetch.
	var all []sent
	for w := range workers {
		c := do(ctx, client, iss, t, fmt.Sprintf("pg-%d-init", w), fmt.Sprintf("pg-user-%d", w), "rotate", nil)
		require.NoError(t, c.err)
		require.Equal(t, http.StatusOK, c.status, "initial rotate of pg-user-%d", w)
		all = append(all, sent{call: c, sentIn: phaseUp, doneIn: phaseUp})
	}
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			user := fmt.Sprintf("pg-user-%d", w)
			for i := 0; i < 3000; i++ { // bounded; the test stops the workers long before
				select {
				case <-stop:
					return
				default:
				}
				before := phase.Load()
				c := do(ctx, client, iss, t, fmt.Sprintf("pg-%d-%d", w, i), user, sequence[i%len(sequence)], nil)
				results <- sent{call: c, sentIn: before, doneIn: phase.Load()}
			}
		}()
	}

	counts := map[string]int{}
	ticker := time.NewTicker(100 * time.Millisecond) // paces the /readyz probes
	defer ticker.Stop()
	sawNotReady, sawReadyAgain := false, false
	for phase.Load() != phaseRecovered || counts["recovered-ok"] < 30 || !sawReadyAgain {
		select {
		case r := <-results:
			all = append(all, r)
			ok := r.err == nil && r.status/100 == 2
			switch {
			case r.sentIn == phaseUp && r.doneIn == phaseUp && ok:
				counts["up-ok"]++
			case r.sentIn == phaseDown && r.doneIn == phaseDown:
				counts["down"]++
			case r.sentIn == phaseRecovered && ok:
				counts["recovered-ok"]++
			}
		case <-ticker.C:
			switch phase.Load() {
			case phaseDown:
				if !sawNotReady {
					sawNotReady = !readyz(ctx, client)
				}
			case phaseRecovered:
				if !sawReadyAgain {
					sawReadyAgain = readyz(ctx, client)
				}
			}
		case <-ctx.Done():
			t.Fatalf("the outage test did not finish: phase %d, %v\n%s", phase.Load(), counts, srv.Logs())
		}
		switch phase.Load() {
		case phaseUp:
			if counts["up-ok"] >= 30 {
				phase.Store(phaseStopping)
				pg.Stop(t)
				phase.Store(phaseDown)
			}
		case phaseDown:
			if counts["down"] >= 40 && sawNotReady {
				phase.Store(phaseStarting)
				pg.Start(t)
				phase.Store(phaseRecovered)
			}
		}
	}
	close(stop)
	wg.Wait()
	close(results)
	for r := range results {
		all = append(all, r)
	}

	// Every answer is a 2xx or a quick 503 STORE_UNAVAILABLE; while the
	// database was down, only the 503.
	var calls []call
	for _, r := range all {
		require.NoError(t, r.err, "%s %s", r.op, r.id)
		require.Less(t, r.took, requestTimeout+2*time.Second, "%s %s hung for %s", r.op, r.id, r.took)
		if r.status/100 != 2 {
			require.Equal(t, http.StatusServiceUnavailable, r.status, "%s %s: %d %s", r.op, r.id, r.status, r.code)
			require.Equal(t, "STORE_UNAVAILABLE", r.code, "%s %s", r.op, r.id)
		}
		if r.sentIn == phaseDown && r.doneIn == phaseDown {
			require.Equal(t, http.StatusServiceUnavailable, r.status, "%s %s answered %d while the database was down", r.op, r.id, r.status)
		}
		calls = append(calls, r.call)
	}
	t.Logf("outcomes by phase: %v", counts)

	// Durable: audit rows, acknowledged state, constraints, unwrap.
	admin, err := pgx.Connect(ctx, pg.URL("keybroker"))
	require.NoError(t, err)
	defer admin.Close(context.Background())
	requireAcknowledgedAudited(t, calls, auditByAgent(t, ctx, admin))
	require.NoError(t, faults.CheckVaultConstraints(ctx, admin, schema))
	models := map[string]*vaultModel{}
	for _, c := range calls {
		if models[c.user] == nil {
			models[c.user] = &vaultModel{}
		}
		require.NoError(t, models[c.user].observe(c))
	}
	for user, m := range models {
		final := do(ctx, client, iss, t, "final-"+user, user, "key", nil)
		require.NoError(t, final.err)
		require.Equal(t, http.StatusOK, final.status, "%s does not unwrap after the restart: %s", user, final.code)
		require.NoError(t, m.observe(final))
		m.requireRowMatches(t, ctx, admin, user)
	}
	requireLogsHoldNoSecrets(t, iss, calls, srv)
}

// readyz reports whether /readyz answers 200.
func readyz(ctx context.Context, c *faults.Client) bool {
	res, err := c.Do(ctx, http.MethodGet, "/readyz", nil, nil)
	return err == nil && res.Status == http.StatusOK
}

// requireReady waits, boundedly, until /readyz says want.
func requireReady(t *testing.T, ctx context.Context, c *faults.Client, want bool) {
	t.Helper()
	ticker := time.NewTicker(100 * time.Millisecond)
	defer ticker.Stop()
	deadline := time.After(30 * time.Second)
	for readyz(ctx, c) != want {
		select {
		case <-ticker.C:
		case <-deadline:
			t.Fatalf("/readyz did not become ready=%v within 30s", want)
		}
	}
}
