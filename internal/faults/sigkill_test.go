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

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/internal/faults"
)

// TestSIGKILLDuringWrites kills `keybroker serve` with SIGKILL — no
// shutdown, no flush, as an OOM kill or a crashed node — three times while
// four clients write (init, rotate, recovery wrap set and clear,
// zero-knowledge on and off, fetches), restarting it on the same database
// each time. Afterwards the three CHECK constraints hold, every vault
// unwraps (a key whose check value matches, or the recovery blob), no
// acknowledged write was lost, and every acknowledged request has its
// audit row.
func TestSIGKILLDuringWrites(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	dbURL, admin := sharedDatabase(t)
	iss := newIssuer(t)
	env := serverEnv(dbURL, iss, "MANA_AUTH_KEK="+newKEKText())
	bin := faults.Keybroker(t)
	sequence := []string{"rotate", "recovery-set", "key", "zk-on", "key", "zk-off", "recovery-clear", "init", "key", "recovery-set", "zk-on", "key", "zk-off"}
	const workers = 4

	var calls []call
	lastKey := make([][]byte, workers) // what each worker sends to leave zero-knowledge
	for round := range 3 {
		srv := faults.StartServer(t, bin, env)
		client := faults.NewClient(srv.URL)
		results := make(chan call, 4096)
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				user := fmt.Sprintf("kill-user-%d", w)
				for i := 0; i < 2000; i++ { // bounded; the kill ends the round long before
					select {
					case <-stop:
						return
					default:
					}
					op := sequence[(round*7+i)%len(sequence)]
					c := do(ctx, client, iss, t, fmt.Sprintf("kill-%d-%d-%d", round, w, i), user, op, lastKey[w])
					if c.mk != nil {
						lastKey[w] = c.mk
					}
					results <- c
				}
			}()
		}
		acknowledged := 0
		for acknowledged < 40 {
			select {
			case c := <-results:
				calls = append(calls, c)
				if c.err == nil && c.status/100 == 2 {
					acknowledged++
				}
			case <-ctx.Done():
				t.Fatalf("round %d: only %d writes acknowledged\n%s", round, acknowledged, srv.Logs())
			}
		}
		srv.Kill(t) // requests are in flight: the workers have not stopped
		close(stop)
		wg.Wait()
		close(results)
		for c := range results {
			calls = append(calls, c)
		}
		client.Close()
	}

	// Every answer before a kill was a documented one: no 500 on the way.
	for _, c := range calls {
		if c.err == nil {
			require.Less(t, c.status, 500, "%s %s of %s: %d %s", c.op, c.id, c.user, c.status, c.code)
		}
	}

	srv := faults.StartServer(t, bin, env)
	client := faults.NewClient(srv.URL)
	defer client.Close()
	require.NoError(t, faults.CheckVaultConstraints(ctx, admin, schema))
	requireAcknowledgedAudited(t, calls, auditByAgent(t, ctx, admin))
	models := map[string]*vaultModel{}
	for _, c := range calls {
		if models[c.user] == nil {
			models[c.user] = &vaultModel{}
		}
		require.NoError(t, models[c.user].observe(c))
	}
	for user, m := range models {
		m.requireRowMatches(t, ctx, admin, user)
	}
	requireEveryVaultUnwraps(t, ctx, client, iss, admin)
	cut := 0
	for _, c := range calls {
		if c.err != nil {
			cut++
		}
	}
	t.Logf("%d requests over 3 kills, %d of them lost at the connection by a kill", len(calls), cut)
}

// requireEveryVaultUnwraps fetches every user's key through the API: a
// standard vault yields a key whose check value is the stored one, a
// zero-knowledge vault its recovery blob.
func requireEveryVaultUnwraps(t *testing.T, ctx context.Context, client *faults.Client, iss *issuer, admin faults.Querier) {
	t.Helper()
	rows, err := admin.Query(ctx, "SELECT user_id, zero_knowledge, key_check FROM "+pgx.Identifier{schema, "encryption_vaults"}.Sanitize())
	require.NoError(t, err)
	type vault struct {
		user     string
		zk       bool
		keyCheck *string
	}
	var vaults []vault
	for rows.Next() {
		var v vault
		require.NoError(t, rows.Scan(&v.user, &v.zk, &v.keyCheck))
		vaults = append(vaults, v)
	}
	require.NoError(t, rows.Err())
	require.NotEmpty(t, vaults)
	for _, v := range vaults {
		res, err := client.Vault(ctx, http.MethodGet, "/key", iss.token(t, v.user), nil)
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, res.Status, "%s does not unwrap: %s", v.user, res.Raw)
		if v.zk {
			require.Equal(t, true, res.Body["requiresRecoveryCode"], "%s: %s", v.user, res.Raw)
			continue
		}
		mk := res.MasterKey()
		require.Len(t, mk, broker.MasterKeySize, "%s: %s", v.user, res.Raw)
		if v.keyCheck != nil {
			require.Equal(t, broker.KeyCheckValue(mk), *v.keyCheck, "%s: the key does not match its check value", v.user)
		}
	}
}
