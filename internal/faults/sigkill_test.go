package faults_test

import (
	"context"
	"fmt"
	"net/http"
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

	users := make([]string, workers)
	for w := range users {
		users[w] = fmt.Sprintf("kill-user-%d", w)
	}
	srv := faults.StartServer(t, bin, env)
	servers := []*faults.Server{srv}
	l := startLoad(t, ctx, iss, []*faults.Client{faults.NewClient(srv.URL)}, users, sequence)
	for range 3 {
		target := l.acknowledged() + 40
		waitUntil(t, time.Minute, "writes are acknowledged", func() bool { return l.acknowledged() >= target })
		srv.Kill(t) // requests are in flight: the load has not stopped
		srv = faults.StartServer(t, bin, env)
		servers = append(servers, srv)
		l.retarget(faults.NewClient(srv.URL))
	}
	calls := l.finish()

	// Every answer before a kill was a documented one: no 500 on the way.
	for _, c := range calls {
		if c.err == nil {
			require.Less(t, c.status, 500, "%s %s of %s: %d %s", c.op, c.id, c.user, c.status, c.code)
		}
	}

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
	requireLogsHoldNoSecrets(t, iss, calls, servers...)
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
