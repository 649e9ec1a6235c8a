package bench

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/internal/jwtissuer"
	"github.com/keybroker/keybroker/internal/testkit/kmstest/localkms"
	"github.com/keybroker/keybroker/internal/testkit/pgtest"
	"github.com/keybroker/keybroker/pgstore"
)

const (
	rowPGEnv     = "pg-env"
	rowAWSDirect = "aws-direct"
	rowAWSCached = "aws-cached"
	rowSQLite    = "sqlite-env"
)

const floorTitle = "floor: pgbench, same SQL"

// oldTitle is the env-KEK row of KEYBROKER_BENCH_OLD_BIN.
const oldTitle = "PostgreSQL + env KEK, KEYBROKER_BENCH_OLD_BIN"

// freshTitle is the env-KEK row where no token is presented twice, so
// every request pays the full JWT check: a storm of new logins.
const freshTitle = "PostgreSQL + env KEK, a new token per request"

// freshConcurrency is the one concurrency of the fresh-token row.
const freshConcurrency = 64

// pacedConcurrency is the number of workers of the paced step at half of
// peak throughput: enough that a slow answer does not hold back the pace.
const pacedConcurrency = 64

// bench is the shared state of one TestBenchTable run.
type bench struct {
	t       *testing.T
	s       settings
	bin     string
	jwksURL string
	issuer  *jwtissuer.Issuer
	tokens  []string
	kms     *localkms.Server
	kmsKey  localkms.Key

	rows         []*Row
	floor        map[int]float64 // pgbench floor req/s by concurrency
	skipped      []string        // rows that could not run, and why
	startToReady map[string]time.Duration
	maxConns     int // the PostgreSQL server's max_connections
	// wrk drives the closed-loop steps when installed ("" otherwise: the
	// Go generator), with its files in wrkDir.
	wrk, wrkDir string
	// halfPeak is the pace of each configuration's step at half of its
	// peak, by title: the step the p99 target is read from.
	halfPeak map[string]float64
	// peer, when configured, is measured beside the env-KEK row at each
	// concurrency and pace (peer_test.go).
	peer *peer
}

// TestBenchTable is `make bench`: the load table of docs/benchmarks.md.
func TestBenchTable(t *testing.T) {
	if os.Getenv("KEYBROKER_BENCH") != "1" {
		t.Skip("load benchmark (minutes, reports numbers, asserts none): run it with `make bench` or KEYBROKER_BENCH=1")
	}
	if _, err := exec.LookPath("pgbench"); err != nil {
		t.Fatal("pgbench is not installed; it measures the floor (apt-get install postgresql-client)")
	}
	s := loadSettings(t)
	b := &bench{t: t, s: s, floor: map[int]float64{}, startToReady: map[string]time.Duration{}, halfPeak: map[string]float64{}}
	b.bin = buildKeybroker(t)
	b.wrk, b.wrkDir = WrkPath(), t.TempDir()
	if b.wrk == "" {
		t.Log("wrk is not installed (apt-get install wrk): the Go generator drives every step, and its CPU is taken from the server's cores")
	}

	// The token issuer: tokens minted here, its JWKS served on loopback
	// to the server, which verifies every request as in production.
	issuer, err := jwtissuer.New("https://auth.bench.test")
	require.NoError(t, err)
	jwks := httptest.NewServer(issuer.JWKSHandler())
	t.Cleanup(jwks.Close)
	b.jwksURL, b.issuer = jwks.URL, issuer
	now := time.Now()
	for i := 1; i <= s.users; i++ {
		tok, err := issuer.Mint(jwtissuer.Claims{Subject: UserID(i), IssuedAt: now, Expiry: now.Add(2 * time.Hour)})
		require.NoError(t, err)
		b.tokens = append(b.tokens, tok)
	}

	b.kms = localkms.Start(t)
	b.kmsKey = b.kms.CreateKey(t, "keybroker-bench")

	machine := ThisMachine()
	machine.LoadBefore = LoadAverage()
	machine.Pgbench = PgbenchVersion()
	machine.PostgreSQL, b.maxConns = serverInfo(t)
	var why string
	b.peer, why, err = peerFromEnv(t.Context())
	require.NoError(t, err)
	if why != "" {
		b.skipped = append(b.skipped, why)
	}

	b.runAll()
	for _, r := range b.rows {
		if r.FloorRPS == 0 && r.Rate == 0 && r.Config != floorTitle {
			r.FloorRPS = b.floor[r.Concurrency]
		}
	}

	machine.LoadAfter = LoadAverage()
	b.sortRows()
	table := Table(b.rows)
	targets := b.targets() + b.targets22()
	fmt.Printf("\n%s\n%s\n%s", machine.Markdown(), table, targets)
	for _, why := range b.skipped {
		fmt.Println("not measured:", why)
	}
	var micro string
	if s.micro {
		micro = runMicro(t)
		fmt.Printf("\n%s", micro)
	}
	if s.out == "-" {
		return
	}
	doc, err := os.ReadFile(s.out)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	text := string(doc)
	text = ReplaceSection(text, "machine", machine.Markdown())
	load := table
	for _, why := range b.skipped {
		load += "\nNot measured: " + why + "\n"
	}
	text = ReplaceSection(text, "table", load)
	text = ReplaceSection(text, "targets", targets)
	if micro != "" {
		text = ReplaceSection(text, "micro", micro)
	}
	require.NoError(t, os.WriteFile(s.out, []byte(text), 0o644))
	t.Logf("wrote %s", s.out)
}

// buildKeybroker builds the real binary once, as `make build` does, or
// returns KEYBROKER_BENCH_BIN when that names one already built (another
// commit's, for a comparison).
func buildKeybroker(t *testing.T) string {
	t.Helper()
	if bin := os.Getenv("KEYBROKER_BENCH_BIN"); bin != "" {
		return bin
	}
	root, err := filepath.Abs("../..")
	require.NoError(t, err)
	bin := filepath.Join(t.TempDir(), "keybroker")
	goTool := os.Getenv("GO")
	if goTool == "" {
		goTool = "go"
	}
	cmd := exec.Command(goTool, "build", "-trimpath", "-o", bin, "./cmd/keybroker")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "go build ./cmd/keybroker:\n%s", out)
	return bin
}

func serverInfo(t *testing.T) (version string, maxConns int) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, pgtest.AdminURL())
	require.NoError(t, err)
	defer conn.Close(ctx)
	var max string
	require.NoError(t, conn.QueryRow(ctx, "SELECT current_setting('server_version'), current_setting('max_connections')").Scan(&version, &max))
	maxConns, err = strconv.Atoi(max)
	require.NoError(t, err)
	return "PostgreSQL " + version, maxConns
}

// database makes a fresh database for a server row (see roleDatabase).
func (b *bench) database() string { return roleDatabase(b.t) }

// roleDatabase makes a fresh database and a plain role (no superuser, no
// BYPASSRLS) that may create the schema in it, and returns the URL that
// connects as that role: row-level security binds the server and pgbench
// as it binds production. Both go away with the test.
func roleDatabase(tb testing.TB) string {
	tb.Helper()
	role, _ := pgtest.NewPlainDatabase(tb)
	return role.URL
}

// serverEnv is the whole environment of a server: nothing is inherited.
func (b *bench) serverEnv(extra ...string) []string {
	env := []string{
		"HOME=" + b.t.TempDir(),
		"KEYBROKER_ADDR=127.0.0.1:0",
		"KEYBROKER_JWKS_URL=" + b.jwksURL,
		"KEYBROKER_JWT_ISSUER=" + b.issuer.Issuer(),
		"KEYBROKER_JWT_AUDIENCE=" + b.issuer.Issuer(),
		// The harness mints its tokens once, for the whole run (2h).
		"KEYBROKER_JWT_MAX_LIFETIME=3h",
		"KEYBROKER_LOG_FORMAT=json",
		"KEYBROKER_LOG_LEVEL=info",
	}
	// The Go runtime's knobs for the servers only, to see what they do
	// to memory and latency (the harness keeps its own).
	for _, knob := range []string{"GOGC", "GOMEMLIMIT", "GOMAXPROCS"} {
		if v := os.Getenv("KEYBROKER_BENCH_SERVER_" + knob); v != "" {
			env = append(env, knob+"="+v)
		}
	}
	return append(env, extra...)
}

func newKEKEnv() string {
	key := make([]byte, 32)
	rand.Read(key)
	return "MANA_AUTH_KEK=" + base64.StdEncoding.EncodeToString(key)
}

func (b *bench) start(env []string) (*Process, error) { return b.startBin(b.bin, env) }

func (b *bench) startBin(bin string, env []string) (*Process, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p, err := StartProcess(ctx, bin, env, time.Minute)
	if err != nil {
		return nil, err
	}
	b.t.Cleanup(p.Stop)
	return p, nil
}

// initUsers creates every user's vault through POST /init.
func (b *bench) initUsers(p *Process) {
	t := b.t
	client := NewClient(16)
	defer client.CloseIdleConnections()
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for range 16 {
		wg.Go(func() {
			for {
				i := int(next.Add(1))
				if i > len(b.tokens) {
					return
				}
				if err := initUser(client, p.URL, b.tokens[i-1]); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("init users: %v\n%s", err, p.Tail())
	}
}

func initUser(client *http.Client, base, token string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/api/v1/me/encryption-vault/init", nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("POST /init: HTTP %d", resp.StatusCode)
	}
	return nil
}

// step runs one load step against p and returns its row.
func (b *bench) step(title string, p *Process, conns int, rate float64) *Row {
	return b.stepWith(title, p, conns, rate, b.tokens, false)
}

func (b *bench) stepWith(title string, p *Process, conns int, rate float64, tokens []string, sequential bool) *Row {
	t := b.t
	var kmsBefore, probesBefore, cpuBefore, dbBefore atomic.Int64
	kmsBefore.Store(b.kms.Requests())
	probesBefore.Store(b.kms.DescribeKeys())
	var commitsBefore GroupCommits
	var commitsMu sync.Mutex
	load := Load{
		URL: p.URL + "/api/v1/me/encryption-vault/key", Tokens: tokens, Sequential: sequential, Concurrency: conns,
		Warmup: b.s.warmup, Duration: b.s.duration, Rate: rate,
		OnMeasure: func() {
			if err := p.ResetPeakRSS(); err != nil {
				t.Logf("reset peak RSS: %v (the step reports the lifetime peak)", err)
			}
			kmsBefore.Store(b.kms.Requests())
			probesBefore.Store(b.kms.DescribeKeys())
			p.RecordLatencies()
			if g, err := p.GroupCommits(context.Background()); err == nil {
				commitsMu.Lock()
				commitsBefore = g
				commitsMu.Unlock()
			}
			if cpu, err := p.CPUTime(); err == nil {
				cpuBefore.Store(int64(cpu))
			}
			dbBefore.Store(int64(PostgresCPU()))
		},
	}
	generator := GeneratorGo
	var res *Result
	var err error
	if b.wrk != "" && rate == 0 && !sequential {
		generator = GeneratorWrk
		res, err = RunWrk(context.Background(), b.wrk, load, b.wrkDir)
	} else {
		res, err = Run(context.Background(), load)
	}
	require.NoError(t, err)
	cpu, err := p.CPUTime()
	require.NoError(t, err)
	db := PostgresCPU() - time.Duration(dbBefore.Load())
	rss, err := p.PeakRSS()
	require.NoError(t, err)
	row := &Row{Config: title, Concurrency: conns, Rate: rate, Result: res, PeakRSS: rss, KMSCalls: -1, Generator: generator,
		CPU: cpu - time.Duration(cpuBefore.Load()), ServerLatencies: p.ServerLatencies()}
	if !strings.Contains(title, "SQLite") {
		row.DBCPU = db
	}
	if strings.Contains(title, "AWS") {
		row.KMSProbes = b.kms.DescribeKeys() - probesBefore.Load()
		row.KMSCalls = b.kms.Requests() - kmsBefore.Load() - row.KMSProbes
	}
	if res.Errors > 0 {
		t.Logf("%s, %d conns: %d errors, first: %s\n%s", title, conns, res.Errors, res.FirstError, p.Tail())
	}
	if g, err := p.GroupCommits(context.Background()); err == nil {
		commitsMu.Lock()
		row.GroupCommits = g.Sub(commitsBefore)
		commitsMu.Unlock()
	}
	t.Logf("%-45s %4d conns: %8.0f req/s  p50 %s  p99 %s  p99.9 %s  server p50 %s p99 %s  RSS %.1f MiB  CPU %.0f µs/req  PostgreSQL %.0f µs/req  %s %.0f µs/req  %s",
		title, conns, res.RPS(), ms(res.Percentile(50)), ms(res.Percentile(99)), ms(res.Percentile(99.9)),
		ms(percentile(row.ServerLatencies, 50)), ms(percentile(row.ServerLatencies, 99)), float64(rss)/(1<<20),
		usPer(row.CPU, res.OK), usPer(db, res.OK), generator, usPer(res.GeneratorCPU, res.OK), row.GroupCommits)
	return row
}

// runAll starts every configuration first and then interleaves their
// steps — at each concurrency every server in turn, the floor right
// after the env-KEK server, in an order that rotates — so that a change
// in the machine's background load during the run lands on all rows
// alike instead of on whichever row ran then. Idle servers cost nothing
// but their memory.
func (b *bench) runAll() {
	t := b.t
	var servers []*server
	for _, key := range b.s.rows {
		var srv *server
		switch key {
		case rowPGEnv:
			srv = b.startPGEnv()
		case rowAWSDirect, rowAWSCached:
			srv = b.startAWS(key)
		case rowSQLite:
			srv = b.startSQLite()
		}
		if srv != nil {
			b.initUsers(srv.p)
			servers = append(servers, srv)
		}
		if key == rowPGEnv && b.s.oldBin != "" {
			dbURL := b.database()
			env := b.serverEnv("DATABASE_URL="+dbURL, newKEKEnv())
			p, err := b.startBin(b.s.oldBin, env)
			require.NoError(t, err)
			b.initUsers(p)
			servers = append(servers, &server{key: "pg-env-old", title: oldTitle, p: p, env: env, dbURL: dbURL})
		}
	}
	script := FloorScript(pgstore.DefaultSchema, b.s.users)
	dir := t.TempDir()
	peak := map[string]float64{}
	// Each pass runs every closed-loop step once, in an order rotated by
	// concurrency and reversed on odd passes; a row is the merge of its
	// passes, so a burst of background load hits any one row less.
	for pass := range b.s.passes {
		for i, c := range b.s.conns {
			for j := range servers {
				k := (i + j) % len(servers)
				if pass%2 == 1 {
					k = len(servers) - 1 - k
				}
				srv := servers[k]
				row := b.step(srv.title, srv.p, c, 0)
				b.mergeRow(row)
				if srv.key == rowPGEnv {
					b.floorStep(srv.dbURL, script, dir, c)
					if b.peer != nil {
						b.peerStep(c, 0)
					}
				}
			}
		}
	}
	for _, r := range b.rows {
		for _, srv := range servers {
			if r.Config == srv.title {
				peak[srv.key] = max(peak[srv.key], r.Result.RPS())
			}
		}
	}
	for _, srv := range servers {
		if peak[srv.key] == 0 {
			continue
		}
		b.halfPeak[srv.title] = peak[srv.key] / 2
		if !b.s.paced {
			continue
		}
		fractions := []float64{0.5}
		if srv.key == rowPGEnv {
			fractions = pacedFractions
		}
		for _, f := range fractions {
			rate := peak[srv.key] * f
			b.rows = append(b.rows, b.step(srv.title, srv.p, pacedConcurrency, rate))
			if srv.key == rowPGEnv {
				b.pacedFloorStep(srv.dbURL, script, dir, rate)
				if b.peer != nil {
					b.peerStep(pacedConcurrency, rate)
				}
			}
		}
	}
	b.overloadSteps(servers)
	for _, srv := range servers {
		if srv.key == rowPGEnv {
			b.freshTokenStep(srv.p)
		}
	}
	for _, srv := range servers {
		srv.p.Stop()
	}
	// Start to ready with the migrations already applied: the median of
	// three restarts on the same store.
	for _, srv := range servers {
		if srv.key != rowPGEnv && srv.key != rowSQLite {
			continue
		}
		var times []time.Duration
		for range 3 {
			p, err := b.start(srv.env)
			require.NoError(t, err)
			times = append(times, p.StartToReady)
			p.Stop()
		}
		slices.Sort(times)
		b.startToReady[srv.title] = times[1]
		t.Logf("%s: start to ready (migrations applied): %v", srv.title, times)
	}
}
