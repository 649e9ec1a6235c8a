package client_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"net/http"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/client"
	"github.com/keybroker/keybroker/internal/testkit/apitest"
	"github.com/keybroker/keybroker/vaultapi"
)

// TestErrorCodesAreTheServers reads the client's ErrorCode constants from
// errors.go: they are exactly the codes of the server's error table, and
// the status each one's comment names is the status the server sends it
// with.
func TestErrorCodesAreTheServers(t *testing.T) {
	t.Parallel()
	f, err := parser.ParseFile(token.NewFileSet(), "errors.go", nil, parser.ParseComments)
	require.NoError(t, err)
	status := regexp.MustCompile(`^Err\w+ \((\d{3})\b`)
	documented := map[string]int{}
	for _, decl := range f.Decls {
		gen, ok := decl.(*ast.GenDecl)
		if !ok || gen.Tok != token.CONST {
			continue
		}
		for _, spec := range gen.Specs {
			vs := spec.(*ast.ValueSpec)
			if typ, ok := vs.Type.(*ast.Ident); !ok || typ.Name != "ErrorCode" {
				continue
			}
			code, err := strconv.Unquote(vs.Values[0].(*ast.BasicLit).Value)
			require.NoError(t, err)
			m := status.FindStringSubmatch(vs.Doc.Text())
			require.NotNil(t, m, "%s: the comment names no status", vs.Names[0].Name)
			documented[code], _ = strconv.Atoi(m[1])
		}
	}
	require.Equal(t, vaultapi.ErrorCodes(), documented)
}

// TestRateLimitedIsTemporary: a real server's 429 is ErrRateLimited, to
// be retried after its Retry-After.
func TestRateLimitedIsTemporary(t *testing.T) {
	t.Parallel()
	srv := apitest.Start(t, apitest.Options{API: func(cfg *vaultapi.Config) {
		cfg.RateLimit = vaultapi.RateLimit{PerSecond: 0.001, Burst: 1}
	}})
	c := (&server{url: srv.URL, issuer: srv.Issuer}).clientFor(t, "alice")
	_, err := c.Status(t.Context())
	require.NoError(t, err)
	_, err = c.Status(t.Context())
	requireAPIError(t, err, http.StatusTooManyRequests, client.ErrRateLimited)
	var apiErr *client.APIError
	require.ErrorAs(t, err, &apiErr)
	require.True(t, apiErr.Temporary())
	require.Greater(t, apiErr.RetryAfter, 10*time.Minute, "a bucket refilled at 0.001/s")
}
