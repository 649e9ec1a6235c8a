package vaultapi_test

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"unicode"
	"unicode/utf8"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/internal/testkit/apitest"
	"github.com/keybroker/keybroker/internal/testkit/pgtest"
	"github.com/keybroker/keybroker/pgstore"
	"github.com/keybroker/keybroker/vaultapi"
)

// requireCleanAuditText: what an audit row holds of a request is valid
// UTF-8 without control characters, at most 512 bytes.
func requireCleanAuditText(t *testing.T, s string) {
	t.Helper()
	require.True(t, utf8.ValidString(s), "%q is not valid UTF-8", s)
	require.LessOrEqual(t, len(s), 512)
	for _, r := range s {
		require.False(t, unicode.IsControl(r), "%q holds control character %U", s, r)
	}
}

// TestHostileHeadersReachTheAuditRowClean: a User-Agent (or a forwarded
// address from a trusted proxy) holding bytes that are not UTF-8, control
// characters, or a valid character the HTTP layer's cut would split, is
// answered as any other request, and the audit row holds clean text:
// PostgreSQL refused such rows (a 500, and on /key the whole group commit
// re-run one fetch at a time), SQLite stored them raw.
func TestHostileHeadersReachTheAuditRowClean(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name  string
		store func(t *testing.T) broker.Store // nil: apitest's embedded store
	}{
		{"PostgreSQL", func(t *testing.T) broker.Store {
			store, _ := newPGStore(t, schema, nil)
			return store
		}},
		{"SQLite", func(*testing.T) broker.Store { return nil }},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			trusted, err := vaultapi.ParseTrustedProxies([]string{"127.0.0.0/8"})
			require.NoError(t, err)
			srv := apitest.Start(t, apitest.Options{Store: c.store(t), API: func(cfg *vaultapi.Config) {
				cfg.ClientIP = vaultapi.TrustedProxyClientIP(trusted)
			}})
			ctx := context.Background()
			const user = "alice"
			tok := srv.Token(t, user)
			long := strings.Repeat("a", 511) + "é and more" // the HTTP cut at 512 bytes falls inside é
			for i, req := range []struct {
				method, path   string
				userAgent, xff string
				action         broker.Action
				wantUA, wantIP string
			}{
				{http.MethodPost, "/init", "Mozilla/5.0\t\xff\xfe(\xc2\x9b31m)\xe2\x82", "",
					broker.ActionInit, "Mozilla/5.0\uFFFD\uFFFD\uFFFD(\uFFFD31m)\uFFFD\uFFFD", "127.0.0.1"},
				{http.MethodGet, "/key", long, "\xff\xfe, 198.51.100.7",
					broker.ActionFetch, strings.Repeat("a", 511), "198.51.100.7"},
				{http.MethodGet, "/key", "\xc0\xaf\xed\xa0\x80 curl", "198.51.100.7, 203.0.113.5\xc2\x9b",
					broker.ActionFetch, "\uFFFD\uFFFD\uFFFD\uFFFD\uFFFD curl", "127.0.0.1"},
				{http.MethodPost, "/rotate", strings.Repeat("\xff", 600), "203.0.113.5\t, 2001:db8::1",
					broker.ActionRotate, strings.Repeat("\uFFFD", 512/3), "2001:db8::1"},
			} {
				r, err := http.NewRequest(req.method, srv.URL+vaultapi.BasePath+req.path, nil)
				require.NoError(t, err)
				r.Header.Set("Authorization", "Bearer "+tok)
				r.Header.Set("User-Agent", req.userAgent)
				if req.xff != "" {
					r.Header.Set("X-Forwarded-For", req.xff)
				}
				res, err := http.DefaultClient.Do(r)
				require.NoError(t, err)
				res.Body.Close()
				require.Equal(t, http.StatusOK, res.StatusCode, "request %d: %s %s", i, req.method, req.path)

				page, err := srv.Service.AuditPage(ctx, user, "", 1000)
				require.NoError(t, err)
				require.Len(t, page.Entries, i+1, "one row per request")
				row := page.Entries[i]
				require.Equal(t, req.action, row.Action)
				requireCleanAuditText(t, row.UserAgent)
				requireCleanAuditText(t, row.IPAddress)
				require.Equal(t, req.wantUA, row.UserAgent, "request %d", i)
				require.Equal(t, req.wantIP, row.IPAddress, "request %d", i)
			}

			// The control bytes the HTTP client refuses to send get the
			// server's own 400 before any handler: never a 5xx, no row.
			u, err := url.Parse(srv.URL)
			require.NoError(t, err)
			for _, ua := range []string{"a\x00b", "\x1b[2J", "a\x7fb", "a\rb"} {
				conn, err := net.Dial("tcp", u.Host)
				require.NoError(t, err)
				fmt.Fprintf(conn, "GET %s/key HTTP/1.1\r\nHost: %s\r\nAuthorization: Bearer %s\r\nUser-Agent: %s\r\nConnection: close\r\n\r\n",
					vaultapi.BasePath, u.Host, tok, ua)
				res, err := http.ReadResponse(bufio.NewReader(conn), nil)
				require.NoError(t, err)
				res.Body.Close()
				conn.Close()
				require.Equal(t, http.StatusBadRequest, res.StatusCode, "User-Agent %q", ua)
			}
			page, err := srv.Service.AuditPage(ctx, user, "", 1000)
			require.NoError(t, err)
			require.Len(t, page.Entries, 4)
		})
	}
}

// adoptedEnv is a server on a schema adopted from mana-auth, whose vault
// tables reference auth.users, with the given users in that table. wrap,
// when set, wraps the store the server uses.
func adoptedEnv(t *testing.T, users []string, wrap func(*pgstore.Store) broker.Store, opts apitest.Options) *env {
	t.Helper()
	pg, admin := newPGStore(t, "auth", pgtest.CreateManaAuthSchema)
	for _, u := range users {
		pgtest.Exec(t, admin, "INSERT INTO auth.users (id, email) VALUES ($1, $1 || '@example.com')", u)
	}
	logs := &syncBuffer{}
	opts.Store = pg
	if wrap != nil {
		opts.Store = wrap(pg)
	}
	opts.Logger = slog.New(slog.NewJSONHandler(logs, nil))
	srv := apitest.Start(t, opts)
	return &env{t: t, url: srv.URL, issuer: srv.Issuer, admin: admin, logs: logs, store: opts.Store, jwksURL: srv.JWKSURL}
}

// count runs a count(*) query as the superuser.
func (e *env) count(query string, args ...any) int {
	e.t.Helper()
	var n int
	require.NoError(e.t, e.admin.QueryRow(context.Background(), query, args...).Scan(&n))
	return n
}

// TestUnknownUserOnAdoptedSchema: on a mana-auth database a valid token
// whose user has no row in auth.users — an account deleted while its
// token lives on, or one that never existed — gets 403 USER_UNKNOWN from
// every route that writes, not a 500; nothing changes, and since the
// audit table cannot name that user either, each request is logged
// instead (without the token).
func TestUnknownUserOnAdoptedSchema(t *testing.T) {
	t.Parallel()
	e := adoptedEnv(t, []string{"alice", "gone"}, nil, apitest.Options{})
	require.Equal(t, http.StatusOK, e.do(http.MethodPost, "/init", "alice", nil).status, "the adopted schema serves known users")
	require.Equal(t, http.StatusOK, e.do(http.MethodPost, "/init", "gone", nil).status)
	pgtest.Exec(t, e.admin, "DELETE FROM auth.users WHERE id = 'gone'") // cascades to its vault and audit rows

	wrap := base64.StdEncoding.EncodeToString(make([]byte, broker.RecoveryWrapSize))
	iv := base64.StdEncoding.EncodeToString(make([]byte, broker.RecoveryIVSize))
	mk := base64.StdEncoding.EncodeToString(make([]byte, broker.MasterKeySize))
	routes := []struct {
		method, path string
		body         any
	}{
		{http.MethodPost, "/init", nil},
		{http.MethodGet, "/key", nil},
		{http.MethodPost, "/rotate", nil},
		{http.MethodPost, "/recovery-wrap", map[string]string{"recoveryWrappedMk": wrap, "recoveryIv": iv}},
		{http.MethodDelete, "/recovery-wrap", nil},
		{http.MethodPost, "/zero-knowledge", map[string]any{"enable": true}},
		{http.MethodPost, "/zero-knowledge", map[string]any{"enable": false, "masterKey": mk}},
	}
	for _, user := range []string{"gone", "ghost"} {
		for _, r := range routes {
			e.do(r.method, r.path, user, r.body).requireError(t, http.StatusForbidden, vaultapi.CodeUserUnknown)
		}
		st := e.do(http.MethodGet, "/status", user, nil)
		require.Equal(t, http.StatusOK, st.status, "status writes nothing, so it answers as for a user without a vault")
		require.Equal(t, false, st.body["vaultExists"])

		require.Zero(t, e.count("SELECT count(*) FROM auth.encryption_vaults WHERE user_id = $1", user), "%s: no vault was created", user)
		require.Zero(t, e.count("SELECT count(*) FROM auth.encryption_vault_audit WHERE user_id = $1", user))
	}
	require.Equal(t, 1, e.count("SELECT count(*) FROM auth.encryption_vault_audit WHERE user_id = 'alice'"), "others untouched")
	require.Equal(t, 1, e.count("SELECT count(*) FROM auth.encryption_vaults WHERE user_id = 'alice'"))

	logs := e.logs.String()
	require.Equal(t, 2*len(routes), strings.Count(logs, `"msg":"request of an unknown user refused; no audit row can name them"`),
		"each refused request is logged in place of its audit row")
	require.Contains(t, logs, `"user_id":"ghost","action":"fetch"`)
	require.NotContains(t, logs, `"level":"ERROR"`, "not an internal error")
	for _, user := range []string{"gone", "ghost"} {
		require.NotContains(t, logs, e.token(user)[:40], "no token in the log")
	}
}

// fetchCall is one VaultFetch: the users it carried and its error.
type fetchCall struct {
	users []string
	err   error
}

// recordingStore is the PostgreSQL store with a record of every
// VaultFetch call.
type recordingStore struct {
	*pgstore.Store
	mu    sync.Mutex
	calls []fetchCall
}

func (s *recordingStore) VaultFetch(ctx context.Context, b *broker.FetchBatch) error {
	err := s.Store.VaultFetch(ctx, b)
	c := fetchCall{err: err}
	for _, f := range b.Fetches {
		c.users = append(c.users, f.Audit.UserID)
	}
	s.mu.Lock()
	s.calls = append(s.calls, c)
	s.mu.Unlock()
	return err
}

// TestPoisonedFetchesFailAloneUnderLoad: fetches that fail inside a group
// commit (here tokens of users unknown to an adopted schema's users
// table, which no sanitising removes) mixed with many clean concurrent
// fetches. Every clean fetch is answered 200 with its key and has exactly
// one audit row; each poisoned one gets its own 403; and a batch holding
// k poisoned fetches costs at most k+1 store calls — the others commit
// together once, never one by one — which the group-commit observer
// reports as retries.
func TestPoisonedFetchesFailAloneUnderLoad(t *testing.T) {
	t.Parallel()
	const cleanUsers, fetchesPerClean, ghosts, fetchesPerGhost, maxRounds = 32, 4, 4, 2, 5
	var users []string
	for i := range cleanUsers {
		users = append(users, fmt.Sprintf("user-%02d", i))
	}
	var observedMu sync.Mutex
	var observed []broker.GroupCommit
	var rec *recordingStore
	wrap := func(pg *pgstore.Store) broker.Store {
		rec = &recordingStore{Store: pg}
		return rec
	}
	e := adoptedEnv(t, users, wrap, apitest.Options{Broker: func(cfg *broker.Config) {
		cfg.OnGroupCommit = func(c broker.GroupCommit) {
			if c.Kind == broker.GroupCommitFetch {
				observedMu.Lock()
				observed = append(observed, c)
				observedMu.Unlock()
			}
		}
	}})
	keys := map[string]string{}
	for _, u := range users {
		r := e.do(http.MethodPost, "/init", u, nil)
		require.Equal(t, http.StatusOK, r.status, r.raw)
		keys[u] = r.body["masterKey"].(string)
	}
	tokens := map[string]string{}
	for _, u := range users {
		tokens[u] = e.token(u)
	}
	for i := range ghosts {
		tokens[fmt.Sprintf("ghost-%d", i)] = e.token(fmt.Sprintf("ghost-%d", i))
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256}}
	t.Cleanup(client.CloseIdleConnections)

	type outcome struct {
		user   string
		status int
		body   string
	}
	retries, rounds := 0, 0
	for rounds < maxRounds && retries == 0 {
		rounds++
		var requests []string
		for _, u := range users {
			for range fetchesPerClean {
				requests = append(requests, u)
			}
		}
		for i := range ghosts {
			for range fetchesPerGhost {
				requests = append(requests, fmt.Sprintf("ghost-%d", i))
			}
		}
		start := make(chan struct{})
		outcomes := make(chan outcome, len(requests))
		var wg sync.WaitGroup
		for _, u := range requests {
			wg.Go(func() {
				<-start
				req, err := http.NewRequest(http.MethodGet, e.url+vaultapi.BasePath+"/key", nil)
				if err != nil {
					outcomes <- outcome{u, 0, err.Error()}
					return
				}
				req.Header.Set("Authorization", "Bearer "+tokens[u])
				res, err := client.Do(req)
				if err != nil {
					outcomes <- outcome{u, 0, err.Error()}
					return
				}
				defer res.Body.Close()
				var body strings.Builder
				_, _ = bufio.NewReader(res.Body).WriteTo(&body)
				outcomes <- outcome{u, res.StatusCode, body.String()}
			})
		}
		close(start)
		wg.Wait()
		close(outcomes)
		for o := range outcomes {
			if strings.HasPrefix(o.user, "ghost-") {
				require.Equal(t, http.StatusForbidden, o.status, "%s: %s", o.user, o.body)
				require.Contains(t, o.body, `"code":"USER_UNKNOWN"`)
				continue
			}
			require.Equal(t, http.StatusOK, o.status, "%s: %s", o.user, o.body)
			require.Contains(t, o.body, `"masterKey":"`+keys[o.user]+`"`, o.user)
		}
		observedMu.Lock()
		retries = 0
		for _, c := range observed {
			if c.Retry {
				retries++
			}
		}
		observedMu.Unlock()
	}

	// Exactly one audit row per clean fetch, none for the unknown users.
	for _, u := range users {
		require.Equal(t, rounds*fetchesPerClean, e.count("SELECT count(*) FROM auth.encryption_vault_audit WHERE user_id = $1 AND action = 'fetch'", u), u)
	}
	require.Zero(t, e.count("SELECT count(*) FROM auth.encryption_vault_audit WHERE user_id LIKE 'ghost-%'"))

	// The store calls, batch by batch: each retry drops exactly the one
	// unknown user the failed call named, so a batch holding k of them
	// takes at most k+1 calls.
	rec.mu.Lock()
	calls := rec.calls
	rec.mu.Unlock()
	observedMu.Lock()
	defer observedMu.Unlock()
	require.Len(t, observed, len(calls), "the observer sees every store call")
	require.Positive(t, retries, "in %d rounds no batch mixed poisoned and clean fetches", rounds)
	t.Logf("%d rounds, %d store calls, %d retries", rounds, len(calls), retries)
	for i := 0; i < len(calls); {
		require.False(t, observed[i].Retry, "call %d opens a batch", i)
		poisoned := 0
		for _, u := range calls[i].users {
			if strings.HasPrefix(u, "ghost-") {
				poisoned++
			}
		}
		end := i + 1
		for end < len(calls) && observed[end].Retry {
			require.Len(t, calls[end].users, len(calls[end-1].users)-1, "a retry drops one fetch: call %d", end)
			end++
		}
		require.LessOrEqual(t, end-i, poisoned+1, "batch of %d fetches, %d poisoned: %d store calls", len(calls[i].users), poisoned, end-i)
		for j := i; j < end; j++ {
			if calls[j].err == nil {
				require.Equal(t, end-1, j, "the batch ends with its successful call")
				continue
			}
			var item *broker.BatchItemError
			require.ErrorAs(t, calls[j].err, &item)
			require.True(t, strings.HasPrefix(calls[j].users[item.Index], "ghost-"), "the store names an unknown user's fetch")
			require.True(t, errors.Is(item.Err, broker.ErrUnknownUser))
		}
		i = end
	}
}
