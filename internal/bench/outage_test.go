package bench

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/internal/jwtissuer"
	"github.com/keybroker/keybroker/internal/testkit/kmstest/localkms"
)

// TestBenchOutage is `make bench-outage` (docs/benchmarks.md, "A replica
// started while a KMS is down"): a replica of a server whose
// $KEYBROKER_KEK lists two KMS keys (two local-kms instances standing for
// two regions) starts while one of them is down — refusing connections,
// or accepting them and never answering, as a region in trouble does —
// and is measured: the time from exec to the first /readyz 200, then
// every user's key fetched once and a few seconds of closed-loop fetches,
// counting every answer that is not 200. A replica with the down KMS as
// its only KEK is started beside, for contrast. It reports numbers; it
// fails only on a failed fetch or a replica that never gets ready.
func TestBenchOutage(t *testing.T) {
	if os.Getenv("KEYBROKER_BENCH_OUTAGE") != "1" {
		t.Skip("outage benchmark (about a minute): run it with `make bench-outage` or KEYBROKER_BENCH_OUTAGE=1")
	}
	users := 1000
	b := &bench{t: t, s: settings{users: users}}
	b.bin = buildKeybroker(t)
	issuer, err := jwtissuer.New("https://auth.bench.test")
	require.NoError(t, err)
	jwks := httptest.NewServer(issuer.JWKSHandler())
	t.Cleanup(jwks.Close)
	b.jwksURL, b.issuer = jwks.URL, issuer
	now := time.Now()
	for i := 1; i <= users; i++ {
		tok, err := issuer.Mint(jwtissuer.Claims{Subject: UserID(i), IssuedAt: now, Expiry: now.Add(2 * time.Hour)})
		require.NoError(t, err)
		b.tokens = append(b.tokens, tok)
	}

	type region struct {
		id  string
		kms *localkms.Server
		key localkms.Key
	}
	eu, us := &region{id: "aws-eu", kms: localkms.Start(t)}, &region{id: "aws-us", kms: localkms.Start(t)}
	eu.key, us.key = eu.kms.CreateKey(t, "kb-eu"), us.kms.CreateKey(t, "kb-us")
	hanging := blackhole(t)
	refused := closedPort(t)
	uri := func(r *region, endpoint string) string {
		q := url.Values{}
		q.Set("id", r.id)
		q.Set("region", localkms.Region)
		q.Set("endpoint", endpoint)
		return "awskms:///" + r.key.Alias + "?" + q.Encode()
	}
	dbURL := b.database()
	env := func(keks ...string) []string {
		return b.serverEnv("DATABASE_URL="+dbURL, "KEYBROKER_KEK="+strings.Join(keks, " "),
			"AWS_ACCESS_KEY_ID=AKIDLOCALKMS", "AWS_SECRET_ACCESS_KEY=local-kms-secret",
			"AWS_EC2_METADATA_DISABLED=true", "AWS_REGION="+localkms.Region)
	}

	// The first replica makes the data key, wrapped in both regions, and
	// every user's vault.
	first, err := b.start(env(uri(eu, eu.kms.URL), uri(us, us.kms.URL)))
	require.NoError(t, err)
	b.initUsers(first)
	first.Stop()

	type scenario struct {
		name string
		keks []string
		// wantReady: false for the contrast row, which must not get
		// ready within notReadyWait.
		wantReady bool
	}
	scenarios := []scenario{
		{"both KMSes up", []string{uri(eu, eu.kms.URL), uri(us, us.kms.URL)}, true},
		{"first KMS refuses connections", []string{uri(eu, refused), uri(us, us.kms.URL)}, true},
		{"second KMS refuses connections", []string{uri(eu, eu.kms.URL), uri(us, refused)}, true},
		{"first KMS hangs (accepts, never answers)", []string{uri(eu, hanging), uri(us, us.kms.URL)}, true},
		{"second KMS hangs (accepts, never answers)", []string{uri(eu, eu.kms.URL), uri(us, hanging)}, true},
		{"one KEK only, its KMS hangs (before this change)", []string{uri(eu, hanging)}, false},
	}
	const notReadyWait = 15 * time.Second
	var table strings.Builder
	table.WriteString("| replica started with | time to ready | fetches | failed | fetches/s |\n|---|---|---|---|---|\n")
	for _, sc := range scenarios {
		start := time.Now()
		p, err := b.start(env(sc.keks...))
		require.NoError(t, err, sc.name)
		wait := time.Minute
		if !sc.wantReady {
			wait = notReadyWait
		}
		ready, ok := waitReady(p.URL, start, wait)
		if !sc.wantReady {
			require.False(t, ok, "%s: ready", sc.name)
			fmt.Fprintf(&table, "| %s | not ready after %s | – | – | – |\n", sc.name, notReadyWait)
			p.Stop()
			continue
		}
		require.True(t, ok, "%s: not ready after %s\n%s", sc.name, wait, p.Tail())
		total, failed, rate := fetchAll(p.URL, b.tokens, 3*time.Second)
		require.Zero(t, failed, "%s: failed fetches\n%s", sc.name, p.Tail())
		fmt.Fprintf(&table, "| %s | %s | %d | %d | %.0f |\n", sc.name, ready.Round(time.Millisecond), total, failed, rate)
		p.Stop()
	}
	fmt.Printf("\n%s", table.String())
}

// waitReady polls /readyz until it answers 200, and returns the time
// since start; false after wait.
func waitReady(base string, start time.Time, wait time.Duration) (time.Duration, bool) {
	client := &http.Client{Timeout: time.Second}
	for time.Since(start) < wait {
		resp, err := client.Get(base + "/readyz")
		if err == nil {
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return time.Since(start), true
			}
		}
		time.Sleep(5 * time.Millisecond) // a poll interval, not synchronisation
	}
	return 0, false
}

// fetchAll fetches every token's key once, then fetches in a closed loop
// from 16 clients for d; it returns the fetches, those not 200, and the
// rate of the loop.
func fetchAll(base string, tokens []string, d time.Duration) (total, failed int64, perSecond float64) {
	client := NewClient(16)
	defer client.CloseIdleConnections()
	var n, bad atomic.Int64
	get := func(tok string) {
		req, _ := http.NewRequest(http.MethodGet, base+"/api/v1/me/encryption-vault/key", nil)
		req.Header.Set("Authorization", "Bearer "+tok)
		resp, err := client.Do(req)
		n.Add(1)
		if err != nil {
			bad.Add(1)
			return
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			bad.Add(1)
		}
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for i := int(next.Add(1)); i <= len(tokens); i = int(next.Add(1)) {
				get(tokens[i-1])
			}
		})
	}
	wg.Wait()
	once := n.Load()
	start := time.Now()
	var loops atomic.Int64
	for w := range 16 {
		wg.Go(func() {
			for i := w; time.Since(start) < d; i += 16 {
				get(tokens[i%len(tokens)])
				loops.Add(1)
			}
		})
	}
	wg.Wait()
	return n.Load(), bad.Load(), float64(n.Load()-once) / time.Since(start).Seconds()
}

// blackhole is an endpoint that accepts connections and never answers,
// as a KMS region in trouble can: every call waits for its timeout.
func blackhole(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	var conns sync.WaitGroup
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Go(func() {
				<-ctx.Done()
				c.Close()
			})
		}
	}()
	t.Cleanup(func() { ln.Close(); cancel(); conns.Wait() })
	return "http://" + ln.Addr().String()
}

// closedPort is an endpoint that refuses connections: a port that was
// just free.
func closedPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	return "http://" + addr
}
