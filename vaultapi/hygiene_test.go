package vaultapi_test

import (
	"bufio"
	"context"
	"encoding/base64"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/internal/apitest"
	"github.com/keybroker/keybroker/internal/pgtest"
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
