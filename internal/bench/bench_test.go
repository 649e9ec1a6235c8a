package bench

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
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

// Settings of TestBenchTable, each overridable through the environment.
type settings struct {
	users    int           // KEYBROKER_BENCH_USERS
	warmup   time.Duration // KEYBROKER_BENCH_WARMUP
	duration time.Duration // KEYBROKER_BENCH_DURATION, the measured window of each step
	conns    []int         // KEYBROKER_BENCH_CONNS, e.g. "1,16,64,256"
	rows     []string      // KEYBROKER_BENCH_ROWS, a subset of allRows
	out      string        // KEYBROKER_BENCH_OUT, the Markdown file; "-" writes none
	micro    bool          // KEYBROKER_BENCH_MICRO=0 skips the Go micro-benchmarks
	passes   int           // KEYBROKER_BENCH_PASSES, closed-loop passes merged into each row
	// oldBin, KEYBROKER_BENCH_OLD_BIN, is another keybroker binary (an
	// earlier commit's) run as a second PostgreSQL + env KEK row beside
	// the first, step by step: a change is read as a ratio in one run.
	oldBin string
}

const (
	rowPGEnv     = "pg-env"
	rowAWSDirect = "aws-direct"
	rowAWSCached = "aws-cached"
	rowSQLite    = "sqlite-env"
)

var allRows = []string{rowPGEnv, rowAWSDirect, rowAWSCached, rowSQLite}

var rowTitles = map[string]string{
	rowPGEnv:     "PostgreSQL + env KEK",
	rowAWSDirect: "PostgreSQL + AWS KMS direct (cache=off)",
	rowAWSCached: "PostgreSQL + AWS KMS cached",
	rowSQLite:    "SQLite + env KEK",
}

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

// pacedFractions are the paces of the env-KEK row's paced steps, as
// fractions of its peak: the latency an operator gets below the target's
// half of peak. The other rows are paced at half of peak only.
var pacedFractions = []float64{0.1, 0.25, 0.5}

func loadSettings(t *testing.T) settings {
	s := settings{users: 2000, warmup: 2 * time.Second, duration: 5 * time.Second,
		conns: []int{1, 16, 64, 256}, rows: allRows, out: "../../docs/benchmarks.md", micro: true, passes: 3}
	if v := os.Getenv("KEYBROKER_BENCH_PASSES"); v != "" {
		n, err := strconv.Atoi(v)
		require.NoError(t, err, "KEYBROKER_BENCH_PASSES")
		s.passes = max(n, 1)
	}
	if v := os.Getenv("KEYBROKER_BENCH_USERS"); v != "" {
		n, err := strconv.Atoi(v)
		require.NoError(t, err, "KEYBROKER_BENCH_USERS")
		s.users = n
	}
	for name, d := range map[string]*time.Duration{"KEYBROKER_BENCH_WARMUP": &s.warmup, "KEYBROKER_BENCH_DURATION": &s.duration} {
		if v := os.Getenv(name); v != "" {
			parsed, err := time.ParseDuration(v)
			require.NoError(t, err, name)
			*d = parsed
		}
	}
	if v := os.Getenv("KEYBROKER_BENCH_CONNS"); v != "" {
		s.conns = nil
		for f := range strings.SplitSeq(v, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			require.NoError(t, err, "KEYBROKER_BENCH_CONNS")
			s.conns = append(s.conns, n)
		}
	}
	if v := os.Getenv("KEYBROKER_BENCH_ROWS"); v != "" {
		s.rows = strings.Split(v, ",")
		for _, r := range s.rows {
			require.Contains(t, allRows, r, "KEYBROKER_BENCH_ROWS")
		}
	}
	if v := os.Getenv("KEYBROKER_BENCH_OUT"); v != "" {
		s.out = v
	}
	s.micro = os.Getenv("KEYBROKER_BENCH_MICRO") != "0"
	s.oldBin = os.Getenv("KEYBROKER_BENCH_OLD_BIN")
	return s
}

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
	var kmsBefore, probesBefore, cpuBefore atomic.Int64
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
	rss, err := p.PeakRSS()
	require.NoError(t, err)
	row := &Row{Config: title, Concurrency: conns, Rate: rate, Result: res, PeakRSS: rss, KMSCalls: -1, Generator: generator,
		CPU: cpu - time.Duration(cpuBefore.Load()), ServerLatencies: p.ServerLatencies()}
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
	t.Logf("%-45s %4d conns: %8.0f req/s  p50 %s  p99 %s  p99.9 %s  server p50 %s p99 %s  RSS %.1f MiB  CPU %.0f µs/req  %s %.0f µs/req  %s",
		title, conns, res.RPS(), ms(res.Percentile(50)), ms(res.Percentile(99)), ms(res.Percentile(99.9)),
		ms(percentile(row.ServerLatencies, 50)), ms(percentile(row.ServerLatencies, 99)), float64(rss)/(1<<20),
		float64(row.CPU/time.Microsecond)/float64(max(res.OK, 1)), generator,
		float64(res.GeneratorCPU/time.Microsecond)/float64(max(res.OK, 1)), row.GroupCommits)
	return row
}

// server is one configuration under test: a running keybroker whose
// users are initialised.
type server struct {
	key, title string
	p          *Process
	env        []string
	dbURL      string // the PostgreSQL database, for the floor; empty for SQLite
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

// floorStep runs pgbench at the concurrency of the step just measured,
// on the same database, while the server idles.
func (b *bench) floorStep(dbURL, script, dir string, c int) {
	t := b.t
	// pgbench opens one connection per client. The server's
	// max_connections is shared with the idle servers' pools and with
	// whatever else uses it: take what is free, and fewer clients when
	// the server still turns some away.
	clients := min(c, b.maxConns-connectionsInUse(t)-10)
	var res *Result
	var err error
	for range 3 {
		if res, err = Pgbench(context.Background(), dbURL, script, clients, 0, b.s.duration+b.s.warmup, dir); err == nil ||
			!strings.Contains(err.Error(), "connection slots") || clients < 2 {
			break
		}
		clients /= 2
	}
	require.NoError(t, err)
	row := &Row{Config: floorTitle, Concurrency: c, Result: res, KMSCalls: -1, Generator: GeneratorPgbench}
	if clients != c {
		row.Note = fmt.Sprintf("%d clients: the rest of max_connections (%d) was in use", clients, b.maxConns)
	}
	merged := b.mergeRow(row)
	b.floor[c] = merged.Result.RPS()
	t.Logf("%-45s %4d conns: %8.0f tx/s   p50 %s  p99 %s  p99.9 %s",
		floorTitle, clients, res.RPS(), ms(res.Percentile(50)), ms(res.Percentile(99)), ms(res.Percentile(99.9)))
}

// pacedFloorStep runs pgbench paced at rate, right after the server's
// paced step at that rate, with as many connections as the server's pool
// opens: the same SQL at the same pace on the same PostgreSQL, one
// durable commit per fetch.
func (b *bench) pacedFloorStep(dbURL, script, dir string, rate float64) {
	t := b.t
	clients := pgstore.DefaultPoolSize()
	res, err := Pgbench(context.Background(), dbURL, script, clients, rate, b.s.duration+b.s.warmup, dir)
	require.NoError(t, err)
	b.rows = append(b.rows, &Row{Config: floorTitle, Concurrency: clients, Rate: rate, Result: res, KMSCalls: -1, Generator: GeneratorPgbench,
		Note: "paced, as many connections as keybroker's pool"})
	t.Logf("%-45s %4d conns @ %.0f/s: %8.0f tx/s   p50 %s  p99 %s  p99.9 %s",
		floorTitle, clients, rate, res.RPS(), ms(res.Percentile(50)), ms(res.Percentile(99)), ms(res.Percentile(99.9)))
}

func (b *bench) startPGEnv() *server {
	dbURL := b.database()
	env := b.serverEnv("DATABASE_URL="+dbURL, newKEKEnv())
	p, err := b.start(env)
	require.NoError(b.t, err)
	return &server{key: rowPGEnv, title: rowTitles[rowPGEnv], p: p, env: env, dbURL: dbURL}
}

func (b *bench) awsURI(cacheOff bool) string {
	q := url.Values{}
	q.Set("id", "aws-bench")
	q.Set("region", localkms.Region)
	q.Set("endpoint", b.kms.URL)
	if cacheOff {
		q.Set("cache", "off")
	}
	return "awskms:///" + b.kmsKey.Alias + "?" + q.Encode()
}

func (b *bench) startAWS(key string) *server {
	t := b.t
	title := rowTitles[key]
	dbURL := b.database()
	awsEnv := func(uri string) []string {
		return b.serverEnv("DATABASE_URL="+dbURL, "KEYBROKER_KEK="+uri,
			"AWS_ACCESS_KEY_ID=AKIDLOCALKMS", "AWS_SECRET_ACCESS_KEY=local-kms-secret",
			"AWS_EC2_METADATA_DISABLED=true", "AWS_REGION="+localkms.Region)
	}
	env := awsEnv(b.awsURI(key == rowAWSDirect))
	p, err := b.start(env)
	if err != nil && strings.Contains(err.Error(), "cache") {
		// This keybroker has no cache option: every KMS KEK is direct.
		if key == rowAWSCached {
			b.skipped = append(b.skipped, title+": this keybroker has no cached envelope mode for KEK URIs yet (no cache= option)")
			return nil
		}
		env = awsEnv(b.awsURI(false))
		p, err = b.start(env)
	}
	require.NoError(t, err)
	return &server{key: key, title: title, p: p, env: env, dbURL: dbURL}
}

func (b *bench) startSQLite() *server {
	t := b.t
	title := rowTitles[rowSQLite]
	env := b.serverEnv("KEYBROKER_DATA_DIR="+t.TempDir(), newKEKEnv())
	p, err := b.start(env)
	if err != nil && strings.Contains(err.Error(), "no database") {
		b.skipped = append(b.skipped, title+": `keybroker serve` does not open the embedded store yet")
		return nil
	}
	require.NoError(t, err)
	return &server{key: rowSQLite, title: title, p: p, env: env}
}

// freshTokenStep measures the env-KEK server at freshConcurrency with a
// token nobody presented before on every request: enough tokens are
// minted for the step at the rate the random-token step reached.
func (b *bench) freshTokenStep(p *Process) {
	t := b.t
	rate := 0.0
	if r := b.closedRow(rowTitles[rowPGEnv], freshConcurrency); r != nil {
		rate = r.Result.RPS()
	}
	if rate == 0 {
		return // freshConcurrency is not among the swept concurrencies
	}
	n := min(int(rate*(b.s.warmup+b.s.duration).Seconds()*1.5)+1000, 200_000)
	now := time.Now()
	tokens := make([]string, n)
	for i := range tokens {
		tok, err := b.issuer.Mint(jwtissuer.Claims{Subject: UserID(i%b.s.users + 1), IssuedAt: now, Expiry: now.Add(2 * time.Hour)})
		require.NoError(t, err)
		tokens[i] = tok
	}
	row := b.stepWith(freshTitle, p, freshConcurrency, 0, tokens, true)
	if used := row.Result.OK + row.Result.Errors; used > n {
		row.Note = fmt.Sprintf("%d tokens for about %d requests: some were presented twice", n, used)
	}
	b.rows = append(b.rows, row)
}

// sortRows orders the table for reading: each configuration's rows
// together, the floor and the peer beside the env-KEK row of the same
// concurrency or pace, closed-loop steps by concurrency, then the paced
// steps by pace.
func (b *bench) sortRows() {
	group := map[string]int{rowTitles[rowPGEnv]: 0, floorTitle: 0, peerTitle: 0, oldTitle: 0, freshTitle: 1,
		rowTitles[rowAWSDirect]: 2, rowTitles[rowAWSCached]: 3, rowTitles[rowSQLite]: 4}
	slices.SortStableFunc(b.rows, func(x, y *Row) int {
		if d := group[x.Config] - group[y.Config]; d != 0 {
			return d
		}
		if px, py := x.Rate > 0, y.Rate > 0; px != py {
			if px {
				return 1
			}
			return -1
		}
		if d := cmp.Compare(x.Rate, y.Rate); d != 0 {
			return d
		}
		if d := x.Concurrency - y.Concurrency; x.Rate == 0 && d != 0 {
			return d
		}
		// keybroker, then the floor, then the peer.
		rank := func(r *Row) int {
			switch r.Config {
			case floorTitle:
				return 1
			case peerTitle:
				return 2
			}
			return 0
		}
		return rank(x) - rank(y)
	})
}

// mergeRow adds row to the table, or, when the table has the same
// configuration at the same concurrency from an earlier pass, merges it
// into that row: requests, errors, windows and CPU time add up, latency
// samples pool, the peak RSS is the larger. It returns the table's row.
func (b *bench) mergeRow(row *Row) *Row {
	for _, r := range b.rows {
		if r.Config != row.Config || r.Concurrency != row.Concurrency || r.Rate != row.Rate {
			continue
		}
		r.Result.OK += row.Result.OK
		r.Result.Errors += row.Result.Errors
		r.Result.Elapsed += row.Result.Elapsed
		r.Result.Latencies = append(r.Result.Latencies, row.Result.Latencies...)
		slices.Sort(r.Result.Latencies)
		if r.Result.FirstError == "" {
			r.Result.FirstError = row.Result.FirstError
		}
		r.PeakRSS = max(r.PeakRSS, row.PeakRSS)
		r.CPU += row.CPU
		r.Result.GeneratorCPU += row.Result.GeneratorCPU
		r.ServerLatencies = append(r.ServerLatencies, row.ServerLatencies...)
		r.GroupCommits = GroupCommits{Commits: r.GroupCommits.Commits + row.GroupCommits.Commits,
			Requests: r.GroupCommits.Requests + row.GroupCommits.Requests, Took: r.GroupCommits.Took + row.GroupCommits.Took}
		slices.Sort(r.ServerLatencies)
		if r.KMSCalls >= 0 {
			r.KMSCalls += row.KMSCalls
			r.KMSProbes += row.KMSProbes
		}
		if r.Note == "" {
			r.Note = row.Note
		}
		return r
	}
	b.rows = append(b.rows, row)
	return row
}

// connectionsInUse counts the PostgreSQL server's open connections.
func connectionsInUse(t *testing.T) int {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, pgtest.AdminURL())
	require.NoError(t, err)
	defer conn.Close(ctx)
	var n int
	require.NoError(t, conn.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'").Scan(&n))
	return n
}
