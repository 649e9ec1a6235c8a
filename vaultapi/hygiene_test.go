package vaultapi_test

import (
	"bufio"
	"context"
	"fmt"
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
