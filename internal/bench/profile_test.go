package bench

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime/pprof"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/internal/jwtissuer"
	"github.com/keybroker/keybroker/kekproviders/localkek"
	"github.com/keybroker/keybroker/migrations"
	"github.com/keybroker/keybroker/pgstore"
	"github.com/keybroker/keybroker/vaultapi"
	"github.com/keybroker/keybroker/vaultapi/jwtauth"
)

// TestProfileFetch wires the server as `keybroker serve` does (pgstore
// with its default pool, env-style local KEK, jwtauth, vaultapi, JSON
// access log to a file) in this process, drives GET /key, and writes CPU
// and allocation profiles of the run to KEYBROKER_BENCH_PROFILE (a path
// prefix): the way to see where a request's time goes. It reports only.
//
//	KEYBROKER_BENCH_PROFILE=/tmp/kb go test ./internal/bench -run TestProfileFetch -v
//	go tool pprof -top /tmp/kb.cpu
//
// KEYBROKER_BENCH_CONNS sets the workers (default 64), and
// KEYBROKER_BENCH_RATE, when set, paces them to that many requests per
// second.
func TestProfileFetch(t *testing.T) {
	prefix := os.Getenv("KEYBROKER_BENCH_PROFILE")
	if prefix == "" {
		t.Skip("profiling run: set KEYBROKER_BENCH_PROFILE=/path/prefix to write prefix.cpu and prefix.allocs")
	}
	conns := 64
	if v := os.Getenv("KEYBROKER_BENCH_CONNS"); v != "" {
		n, err := strconv.Atoi(v)
		require.NoError(t, err)
		conns = n
	}
	var rate float64 // KEYBROKER_BENCH_RATE paces the load (open loop)
	if v := os.Getenv("KEYBROKER_BENCH_RATE"); v != "" {
		r, err := strconv.ParseFloat(v, 64)
		require.NoError(t, err)
		rate = r
	}
	stack := newStack(t, 2000)
	srv := httptest.NewServer(stack.handler)
	t.Cleanup(srv.Close)
	tokens := stack.tokens
	initAll(t, srv.URL, tokens)

	cpu, err := os.Create(prefix + ".cpu")
	require.NoError(t, err)
	defer cpu.Close()
	duration := 10 * time.Second
	if v := os.Getenv("KEYBROKER_BENCH_DURATION"); v != "" {
		duration, err = time.ParseDuration(v)
		require.NoError(t, err)
	}
	// wrk, when installed, drives closed-loop runs from its own process,
	// so that the profile holds the server's work alone.
	load := Load{URL: srv.URL + "/api/v1/me/encryption-vault/key", Tokens: tokens, Concurrency: conns,
		Duration: duration, Rate: rate}
	var res *Result
	if wrk := WrkPath(); wrk != "" && rate == 0 {
		load.OnMeasure = func() { require.NoError(t, pprof.StartCPUProfile(cpu)) }
		load.Warmup = time.Second
		res, err = RunWrk(context.Background(), wrk, load, t.TempDir())
	} else {
		require.NoError(t, pprof.StartCPUProfile(cpu))
		res, err = Run(context.Background(), load)
	}
	pprof.StopCPUProfile()
	require.NoError(t, err)
	allocs, err := os.Create(prefix + ".allocs")
	require.NoError(t, err)
	defer allocs.Close()
	require.NoError(t, pprof.Lookup("allocs").WriteTo(allocs, 0))
	t.Logf("%d conns: %d requests, %.0f req/s, p50 %s, p99 %s, %d errors (%s); profiles in %s.{cpu,allocs}",
		conns, res.OK, res.RPS(), ms(res.Percentile(50)), ms(res.Percentile(99)), res.Errors, res.FirstError, prefix)
}

// stack is keybroker's request path wired as `keybroker serve` wires it,
// in this process: pgstore on a fresh database with the default pool, a
// local KEK, jwtauth against a loopback JWKS, vaultapi with a JSON log.
type stack struct {
	handler http.Handler
	tokens  []string // one per user, bench-user-1 … bench-user-N
}

func newStack(tb testing.TB, users int) *stack {
	tb.Helper()
	ctx := context.Background()
	dbURL := roleDatabase(tb)
	pool, err := pgstore.OpenPool(ctx, dbURL)
	require.NoError(tb, err)
	tb.Cleanup(pool.Close)
	_, err = migrations.Apply(ctx, pool, pgstore.DefaultSchema)
	require.NoError(tb, err)
	store, err := pgstore.New(ctx, pgstore.Config{Pool: pool})
	require.NoError(tb, err)
	kek, err := localkek.New("env-v1", []byte("0123456789abcdef0123456789abcdef"), false)
	require.NoError(tb, err)
	ring, err := broker.NewKeyring(kek)
	require.NoError(tb, err)
	logFile, err := os.CreateTemp(tb.TempDir(), "access-*.log")
	require.NoError(tb, err)
	tb.Cleanup(func() { logFile.Close() })
	log := slog.New(slog.NewJSONHandler(logFile, nil))
	// The audit key, as serve loads it: every audit row carries a MAC.
	auditKey, err := broker.LoadAuditKey(ctx, store, ring)
	require.NoError(tb, err)
	auditSeal := &broker.AuditSeal{}
	auditSeal.SetKey(auditKey)
	svc, err := broker.New(ctx, broker.Config{Store: store, Keyring: ring, Logger: log, AuditSeal: auditSeal})
	require.NoError(tb, err)

	issuer, err := jwtissuer.New("https://auth.bench.test")
	require.NoError(tb, err)
	jwks := httptest.NewServer(issuer.JWKSHandler())
	tb.Cleanup(jwks.Close)
	verifier, err := jwtauth.New(ctx, jwtauth.Config{JWKSURL: jwks.URL, Issuer: issuer.Issuer(), Audience: issuer.Issuer()})
	require.NoError(tb, err)
	tb.Cleanup(verifier.Close)
	api, err := vaultapi.New(vaultapi.Config{Service: svc, Verifier: verifier, Logger: log})
	require.NoError(tb, err)

	now := time.Now()
	st := &stack{handler: api.Handler()}
	for i := 1; i <= users; i++ {
		tok, err := issuer.Mint(jwtissuer.Claims{Subject: UserID(i), IssuedAt: now, Expiry: now.Add(time.Hour)})
		require.NoError(tb, err)
		st.tokens = append(st.tokens, tok)
	}
	return st
}

// initAll creates every user's vault through POST /init on url.
func initAll(tb testing.TB, url string, tokens []string) {
	tb.Helper()
	client := NewClient(1)
	defer client.CloseIdleConnections()
	for _, tok := range tokens {
		require.NoError(tb, initUser(client, url, tok))
	}
}
