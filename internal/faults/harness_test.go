package faults_test

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/internal/faults"
	"github.com/keybroker/keybroker/internal/jwtissuer"
	"github.com/keybroker/keybroker/internal/testkit/pgtest"
)

// TestMain checks that no test leaves a goroutine behind and removes the
// keybroker binary the tests built.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// local-kms's goleveldb drainer outlives DB.Close by up to a second
		// by design (see kekproviders/awskms).
		goleak.IgnoreTopFunction("github.com/syndtr/goleveldb/leveldb.(*DB).mpoolDrain"),
		goleak.Cleanup(func(int) { faults.RemoveBuild() }),
	)
}

// schema is keybroker's default schema, which the tests' servers use.
const schema = "keybroker"

// issuer is a token issuer whose JWKS is served on 127.0.0.1.
type issuer struct {
	*jwtissuer.Issuer
	jwksURL string

	mu     sync.Mutex
	tokens map[string]string
}

func newIssuer(t *testing.T) *issuer {
	t.Helper()
	iss, err := jwtissuer.New("https://auth.faults")
	require.NoError(t, err)
	srv := httptest.NewServer(iss.JWKSHandler())
	t.Cleanup(srv.Close)
	return &issuer{Issuer: iss, jwksURL: srv.URL, tokens: map[string]string{}}
}

// token returns a token for user, minted once (tokens live 15 minutes,
// longer than any test here). Load generators call it from their own
// goroutines, so a failure is reported with t.Errorf, not FailNow.
func (i *issuer) token(t *testing.T, user string) string {
	i.mu.Lock()
	defer i.mu.Unlock()
	if tok, ok := i.tokens[user]; ok {
		return tok
	}
	tok, err := i.Mint(jwtissuer.Claims{Subject: user})
	if err != nil {
		t.Errorf("mint a token for %s: %v", user, err)
		return ""
	}
	i.tokens[user] = tok
	return tok
}

// serverEnv is the environment of a `keybroker serve` on databaseURL
// with the issuer's JWKS, a loopback port and a fast readiness poll; extra
// names the KEK.
func serverEnv(databaseURL string, iss *issuer, extra ...string) []string {
	return append([]string{
		"DATABASE_URL=" + databaseURL,
		"KEYBROKER_JWKS_URL=" + iss.jwksURL,
		"KEYBROKER_JWT_ISSUER=https://auth.faults",
		"KEYBROKER_JWT_AUDIENCE=https://auth.faults",
		"KEYBROKER_ADDR=127.0.0.1:0",
		"KEYBROKER_LOG_FORMAT=json",
		"KEYBROKER_READY_INTERVAL=200ms",
		"KEYBROKER_RATE_LIMIT=0", // load generators, not abusers
	}, extra...)
}

func newKEKText() string {
	key := make([]byte, 32)
	rand.Read(key)
	return base64.StdEncoding.EncodeToString(key)
}

// sharedDatabase is a fresh database on the machine's PostgreSQL with a
// runtime role that is neither superuser nor BYPASSRLS, as production
// runs: it returns the role's URL and a superuser pool.
func sharedDatabase(t *testing.T) (runtimeURL string, admin *pgx.Conn) {
	t.Helper()
	role, adminURL := pgtest.NewPlainDatabase(t)
	conn, err := pgx.Connect(context.Background(), adminURL)
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return role.URL, conn
}

// call is one request of a load generator, as sent and as answered.
type call struct {
	id     string // sent as the User-Agent, so that its audit row can be found
	user   string
	op     string
	status int
	code   string
	mk     []byte // the master key a 200 carried
	wrap   string // the recovery wrap sent
	err    error  // transport failure
	took   time.Duration
}

// ops of the load generators: method, path and the audit action of the
// row each writes ("" for none).
var ops = map[string]struct{ method, path, action string }{
	"init":           {http.MethodPost, "/init", "init"},
	"rotate":         {http.MethodPost, "/rotate", "rotate"},
	"key":            {http.MethodGet, "/key", "fetch"},
	"status":         {http.MethodGet, "/status", ""},
	"recovery-set":   {http.MethodPost, "/recovery-wrap", "recovery_set"},
	"recovery-clear": {http.MethodDelete, "/recovery-wrap", "recovery_clear"},
	"zk-on":          {http.MethodPost, "/zero-knowledge", "zk_enable"},
	"zk-off":         {http.MethodPost, "/zero-knowledge", "zk_disable"},
}

// do sends op for user; mk is the key zk-off sends.
func do(ctx context.Context, c *faults.Client, iss *issuer, t *testing.T, id, user, op string, mk []byte) call {
	spec := ops[op]
	r := call{id: id, user: user, op: op}
	var body any
	switch op {
	case "recovery-set":
		wrap := make([]byte, broker.RecoveryWrapSize)
		rand.Read(wrap)
		r.wrap = base64.StdEncoding.EncodeToString(wrap)
		body = map[string]string{"recoveryWrappedMk": r.wrap, "recoveryIv": base64.StdEncoding.EncodeToString(make([]byte, broker.RecoveryIVSize))}
	case "zk-on":
		body = map[string]any{"enable": true}
	case "zk-off":
		body = map[string]any{"enable": false, "masterKey": base64.StdEncoding.EncodeToString(mk)}
	}
	res, err := c.Do(ctx, spec.method, faults.VaultPath+spec.path, map[string]string{
		"Authorization": "Bearer " + iss.token(t, user),
		"User-Agent":    id,
	}, body)
	if err != nil {
		r.err = err
		return r
	}
	r.status, r.code, r.mk, r.took = res.Status, res.Code(), res.MasterKey(), res.Elapsed
	return r
}

// load is per-user serial traffic spread over a set of servers that may
// change (a restarted server listens on another port).
type load struct {
	stop chan struct{}
	wg   sync.WaitGroup

	mu      sync.Mutex
	targets []*faults.Client
	moved   chan struct{} // closed when the targets change
	calls   []call
}

// startLoad runs one goroutine per user sending sequence, each request to
// the next target in turn, until finish (at most 2000 requests each).
// After a request fails at the connection (a killed server) a user waits
// for retarget instead of spinning through its budget on refusals.
func startLoad(t *testing.T, ctx context.Context, iss *issuer, targets []*faults.Client, users []string, sequence []string) *load {
	l := &load{stop: make(chan struct{}), targets: targets, moved: make(chan struct{})}
	for u, user := range users {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			var mk []byte
			for i := 0; i < 2000; i++ {
				l.mu.Lock()
				ts, moved := l.targets, l.moved
				l.mu.Unlock()
				c := do(ctx, ts[(u+i)%len(ts)], iss, t, fmt.Sprintf("%s-%d", user, i), user, sequence[(u+i)%len(sequence)], mk)
				if c.mk != nil {
					mk = c.mk
				}
				l.mu.Lock()
				l.calls = append(l.calls, c)
				l.mu.Unlock()
				if c.err != nil {
					// The server is gone: wait for the next one (moved was
					// read before the request, so a restart that already
					// happened does not wait).
					select {
					case <-l.stop:
						return
					case <-moved:
					}
					continue
				}
				select {
				case <-l.stop:
					return
				default:
				}
			}
		}()
	}
	return l
}

// retarget sends the load to other servers from now on.
func (l *load) retarget(targets ...*faults.Client) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.targets = targets
	close(l.moved)
	l.moved = make(chan struct{})
}

// acknowledged counts the 2xx answers so far.
func (l *load) acknowledged() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, c := range l.calls {
		if c.err == nil && c.status/100 == 2 {
			n++
		}
	}
	return n
}

// finish stops the load and returns every request it made.
func (l *load) finish() []call {
	close(l.stop)
	l.wg.Wait()
	return l.calls
}

// waitUntil polls cond every 50ms for at most within.
func waitUntil(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	ticker := time.NewTicker(50 * time.Millisecond)
	defer ticker.Stop()
	deadline := time.After(within)
	for !cond() {
		select {
		case <-ticker.C:
		case <-deadline:
			t.Fatalf("%s: not within %s", what, within)
		}
	}
}

// requireLogsHoldNoSecrets searches everything the servers logged — their
// outages and kills included — for every master key, recovery wrap and
// token of the run.
func requireLogsHoldNoSecrets(t *testing.T, iss *issuer, calls []call, servers ...*faults.Server) {
	t.Helper()
	var logs strings.Builder
	for _, srv := range servers {
		logs.WriteString(srv.Logs())
	}
	var secrets []string
	for _, c := range calls {
		if c.mk != nil {
			secrets = append(secrets, base64.StdEncoding.EncodeToString(c.mk), base64.RawURLEncoding.EncodeToString(c.mk), hex.EncodeToString(c.mk))
		}
		if c.wrap != "" {
			secrets = append(secrets, c.wrap)
		}
	}
	iss.mu.Lock()
	for _, tok := range iss.tokens {
		secrets = append(secrets, tok, tok[strings.LastIndexByte(tok, '.')+1:])
	}
	iss.mu.Unlock()
	require.NotEmpty(t, secrets)
	require.Contains(t, logs.String(), `"msg":"request"`, "the servers logged")
	for _, secret := range secrets {
		require.NotContains(t, logs.String(), secret, "a key, recovery wrap or token is in a server's log")
	}
}

// auditByAgent returns the audit rows of the run keyed by user agent (the
// request id): action and status of each, in order.
func auditByAgent(t *testing.T, ctx context.Context, db faults.Querier) map[string][]string {
	t.Helper()
	rows, err := db.Query(ctx, "SELECT coalesce(user_agent, ''), action, status FROM "+pgx.Identifier{schema, "encryption_vault_audit"}.Sanitize())
	require.NoError(t, err)
	out := map[string][]string{}
	for rows.Next() {
		var agent, action string
		var status int
		require.NoError(t, rows.Scan(&agent, &action, &status))
		out[agent] = append(out[agent], fmt.Sprintf("%s:%d", action, status))
	}
	require.NoError(t, rows.Err())
	return out
}

// requireAcknowledgedAudited: every request that got a 2xx has exactly
// one audit row, with its action and status (status has none).
func requireAcknowledgedAudited(t *testing.T, calls []call, audit map[string][]string) {
	t.Helper()
	for _, c := range calls {
		if c.err != nil || c.status/100 != 2 {
			continue
		}
		action := ops[c.op].action
		if action == "" {
			require.Empty(t, audit[c.id], "%s %s wrote an audit row", c.op, c.id)
			continue
		}
		require.Len(t, audit[c.id], 1, "%s %s of %s got %d but its audit rows are %v", c.op, c.id, c.user, c.status, audit[c.id])
		got := audit[c.id][0]
		require.Contains(t, []string{action + ":200", action + ":201"}, got, "%s %s", c.op, c.id)
	}
}

// vaultModel follows one user's vault through a serial stream of
// requests, some of which failed in a way that leaves it unknown whether
// they committed (a 503 whose connection died with the database): what a
// 2xx acknowledged must stay true until a later request may have changed
// it.
type vaultModel struct {
	mk          []byte // the key the last acknowledged rotate or fetch named
	mkUnknown   bool   // a rotate after it may have committed
	wrap        string // the recovery wrap last acknowledged ("" = none)
	wrapUnknown bool
}

// observe folds c into the model and returns an error when an answer
// contradicts what was acknowledged before. A 2xx changed what it says; a
// 4xx changed nothing (the domain refused it before any write); a 5xx or a
// lost connection may or may not have committed.
func (m *vaultModel) observe(c call) error {
	ok := c.err == nil && c.status/100 == 2
	unknown := c.err != nil || c.status >= 500
	switch c.op {
	case "rotate", "init":
		if unknown {
			m.mkUnknown = true
			m.wrapUnknown = m.wrapUnknown || c.op == "rotate"
		}
		if !ok || c.mk == nil { // refused, or init's recovery blob in zero-knowledge mode
			return nil
		}
		if c.op == "init" && m.mk != nil && !m.mkUnknown && string(c.mk) != string(m.mk) {
			return fmt.Errorf("init %s of %s returned another key than the acknowledged one", c.id, c.user)
		}
		m.mk, m.mkUnknown = c.mk, false
		if c.op == "rotate" {
			m.wrap, m.wrapUnknown = "", false
		}
	case "key":
		if !ok || c.mk == nil {
			return nil
		}
		if m.mk != nil && !m.mkUnknown && string(c.mk) != string(m.mk) {
			return fmt.Errorf("key %s of %s returned another key than the last acknowledged one: a write was lost", c.id, c.user)
		}
		m.mk, m.mkUnknown = c.mk, false
	case "recovery-set", "recovery-clear":
		switch {
		case ok && c.op == "recovery-set":
			m.wrap, m.wrapUnknown = c.wrap, false
		case ok:
			m.wrap, m.wrapUnknown = "", false
		case unknown:
			m.wrapUnknown = true
		}
	}
	return nil
}

// requireRowMatches checks the stored row against the model.
func (m *vaultModel) requireRowMatches(t *testing.T, ctx context.Context, db faults.Querier, user string) {
	t.Helper()
	var wrap *string
	var keyCheck *string
	err := db.QueryRow(ctx, "SELECT recovery_wrapped_mk, key_check FROM "+pgx.Identifier{schema, "encryption_vaults"}.Sanitize()+" WHERE user_id = $1", user).Scan(&wrap, &keyCheck)
	require.NoError(t, err, user)
	if !m.wrapUnknown {
		got := ""
		if wrap != nil {
			got = *wrap
		}
		require.Equal(t, m.wrap, got, "%s: the acknowledged recovery wrap is not the stored one", user)
	}
	if m.mk != nil && !m.mkUnknown {
		require.NotNil(t, keyCheck, user)
		require.Equal(t, broker.KeyCheckValue(m.mk), *keyCheck, "%s: the acknowledged key is not the stored one", user)
	}
}
