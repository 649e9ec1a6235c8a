package bench

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/internal/jwtissuer"
	"github.com/keybroker/keybroker/internal/testkit/pgtest"
	"github.com/keybroker/keybroker/pgstore"
)

// scaleSettings are TestBenchScale's sizes: small by default, so that the
// whole path runs in `make test`; `make bench-scale` sets
// KEYBROKER_BENCH_SCALE=1 for the size (1 000 000 vaults, 100 000
// 000 audit rows over 20 days), and KEYBROKER_BENCH_SCALE_* override each.
type scaleSettings struct {
	full             bool
	vaults, rows     int64 // KEYBROKER_BENCH_SCALE_VAULTS, _ROWS: filled by SQL
	days             int   // KEYBROKER_BENCH_SCALE_DAYS: the audit rows' spread
	users            int   // KEYBROKER_BENCH_SCALE_USERS: vaults made by POST /init, whose tokens fetch
	conns            int   // KEYBROKER_BENCH_SCALE_CONNS
	rounds           int   // KEYBROKER_BENCH_SCALE_ROUNDS: windows on each server, alternating
	warmup, duration time.Duration
	out              string // KEYBROKER_BENCH_SCALE_OUT; "-" writes nothing
}

func loadScaleSettings(t *testing.T) scaleSettings {
	s := scaleSettings{vaults: 2000, rows: 20000, days: 20, users: 100, conns: 16, rounds: 1,
		warmup: 200 * time.Millisecond, duration: time.Second, out: "-"}
	if os.Getenv("KEYBROKER_BENCH_SCALE") == "1" {
		s = scaleSettings{full: true, vaults: 1_000_000, rows: 100_000_000, days: 20, users: 2000, conns: 16, rounds: 3,
			warmup: 3 * time.Second, duration: 15 * time.Second, out: "../../docs/benchmarks.md"}
	}
	for name, p := range map[string]*int64{"VAULTS": &s.vaults, "ROWS": &s.rows} {
		if v := os.Getenv("KEYBROKER_BENCH_SCALE_" + name); v != "" {
			n, err := strconv.ParseInt(v, 10, 64)
			require.NoError(t, err, name)
			*p = n
		}
	}
	for name, p := range map[string]*int{"DAYS": &s.days, "USERS": &s.users, "CONNS": &s.conns, "ROUNDS": &s.rounds} {
		if v := os.Getenv("KEYBROKER_BENCH_SCALE_" + name); v != "" {
			n, err := strconv.Atoi(v)
			require.NoError(t, err, name)
			*p = n
		}
	}
	if v := os.Getenv("KEYBROKER_BENCH_SCALE_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		require.NoError(t, err)
		s.duration = d
	}
	if v := os.Getenv("KEYBROKER_BENCH_SCALE_OUT"); v != "" {
		s.out = v
	}
	return s
}

// scaleStep is one measured GET /key window.
type scaleStep struct {
	rps           float64
	p50, p99, max time.Duration
	errors        int
}

func (s scaleStep) String() string {
	return fmt.Sprintf("%.0f req/s, p50 %s, p99 %s, max %s, %d errors", s.rps, ms(s.p50), ms(s.p99), ms(s.max), s.errors)
}

// TestBenchScale is `make bench-scale` (and, small, part of `make test`):
// one server on one database, measured empty and then after the audit
// table and the vaults were filled by SQL. It reports GET /key throughput
// as a ratio to the empty run, how long `audit status`, `kek status` and
// a readiness poll take, how long dropping the partitions past a
// retention takes while fetches run (and what the fetches saw), and the
// database size per million fetches. It asserts only that everything
// worked: the numbers are the output.
func TestBenchScale(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the server")
	}
	s := loadScaleSettings(t)
	require.GreaterOrEqual(t, s.days, 3, "KEYBROKER_BENCH_SCALE_DAYS: a day to drop, a day kept, today")
	ctx := context.Background()
	b := newScaleBench(t, s)
	// Two servers on two databases, one left empty and one filled, whose
	// windows alternate: a change in the machine's other load lands on
	// both.
	empty, filled := newScaleServer(t, b, s), newScaleServer(t, b, s)
	emptyProbes := empty.probes()

	fill := fillScale(t, filled.admin, s)
	var auditBytes, auditRows, vaultBytes int64
	require.NoError(t, filled.admin.QueryRow(ctx, `SELECT coalesce(sum(pg_total_relation_size(i.inhrelid)), 0),
    (SELECT count(*) FROM keybroker.encryption_vault_audit), pg_total_relation_size('keybroker.encryption_vaults')
FROM pg_inherits i WHERE i.inhparent = 'keybroker.encryption_vault_audit'::regclass`).Scan(&auditBytes, &auditRows, &vaultBytes))
	verify := filled.sealAndVerify(auditRows)
	t.Logf("sealed %d rows in %d checkpoints in %s; audit verify in %s (%.0f rows/s)",
		auditRows, verify.checkpoints, verify.sealTook, verify.verifyTook, verify.rowsPerSecond())
	filledProbes := filled.probes()
	var emptySteps, filledSteps []scaleStep
	for round := range s.rounds {
		order := []*scaleServer{empty, filled}
		if round%2 == 1 {
			order = []*scaleServer{filled, empty}
		}
		for _, srv := range order {
			step := srv.measure(nil)
			if srv == empty {
				emptySteps = append(emptySteps, step)
			} else {
				filledSteps = append(filledSteps, step)
			}
			t.Logf("round %d, %s: %s", round+1, map[bool]string{true: "empty", false: "filled"}[srv == empty], step)
		}
	}

	// Drop the oldest day (and the moved table before it, empty) while
	// fetches run, as the daily upkeep does past a retention of
	// s.days-2 days: the rows of a day, once a day.
	store, err := pgstore.New(ctx, pgstore.Config{Pool: pgtest.NewPool(t, filled.url), Schema: "keybroker"})
	require.NoError(t, err)
	oldest := time.Now().UTC().Truncate(24*time.Hour).AddDate(0, 0, 1-s.days).Format("encryption_vault_audit_p20060102")
	type dropped struct {
		res  *broker.AuditUpkeepResult
		took time.Duration
		err  error
	}
	done := make(chan dropped, 1)
	// The drop starts as the measured window opens, and the window is
	// long enough to hold it.
	during := filled.measure(func() {
		go func() {
			start := time.Now()
			res, err := store.AuditUpkeep(ctx, broker.AuditUpkeepParams{Now: time.Now(), Retention: time.Duration(s.days-2) * 24 * time.Hour, Runner: "bench-scale"})
			done <- dropped{res, time.Since(start), err}
		}()
	})
	d := <-done
	require.NoError(t, d.err)
	require.False(t, d.res.Busy)
	require.Contains(t, d.res.Dropped, oldest, "the oldest day is past the retention")
	t.Logf("drop %v in %s; fetches meanwhile: %s", d.res.Dropped, d.took, during)

	report := scaleReport(s, emptySteps, filledSteps, during, emptyProbes, filledProbes, d.took, d.res, verify, fill, auditBytes, auditRows, vaultBytes)
	fmt.Println(report)
	if s.out == "-" {
		return
	}
	doc, err := os.ReadFile(s.out)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(s.out, []byte(ReplaceSection(string(doc), "scale", report)), 0o644))
}

// newScaleBench mints the users' tokens, serves their JWKS and builds the
// binary.
func newScaleBench(t *testing.T, s scaleSettings) *bench {
	issuer, err := jwtissuer.New("https://auth.bench.test")
	require.NoError(t, err)
	jwks := httptest.NewServer(issuer.JWKSHandler())
	t.Cleanup(jwks.Close)
	b := &bench{t: t, s: settings{warmup: s.warmup, duration: s.duration}, jwksURL: jwks.URL, issuer: issuer}
	now := time.Now()
	for i := 1; i <= s.users; i++ {
		tok, err := issuer.Mint(jwtissuer.Claims{Subject: UserID(i), IssuedAt: now, Expiry: now.Add(3 * time.Hour)})
		require.NoError(t, err)
		b.tokens = append(b.tokens, tok)
	}
	b.bin = buildKeybroker(t)
	return b
}

// scaleServer is one server of TestBenchScale on a database of its own.
type scaleServer struct {
	t     *testing.T
	s     scaleSettings
	b     *bench
	url   string // the owner role's
	admin *pgxpool.Pool
	env   []string
	p     *Process
}

// newScaleServer migrates a new database, partitions its audit table
// before the server starts (an empty table moves at once, with the day
// partitions from today), starts the server and makes the users' vaults.
func newScaleServer(t *testing.T, b *bench, s scaleSettings) *scaleServer {
	role, adminURL := pgtest.NewPlainDatabase(t)
	srv := &scaleServer{t: t, s: s, b: b, url: role.URL, admin: pgtest.NewPool(t, adminURL),
		// The per-user rate limit off: a few users make all the load.
		env: b.serverEnv("DATABASE_URL="+role.URL, newKEKEnv(), "KEYBROKER_RATE_LIMIT=0",
			"KEYBROKER_AUDIT_SEAL_INTERVAL="+scaleSealInterval)}
	srv.cli("migrate")
	auditLayout(t, role.URL, s)
	srv.cli("audit", "upkeep")
	p, err := b.start(srv.env)
	require.NoError(t, err)
	srv.p = p
	b.initUsers(p)
	return srv
}

// cli runs a keybroker command on the server's database and returns how
// long it took, process start included.
func (srv *scaleServer) cli(args ...string) time.Duration {
	srv.t.Helper()
	cmd := exec.Command(srv.b.bin, args...)
	cmd.Env = srv.env
	start := time.Now()
	out, err := cmd.CombinedOutput()
	took := time.Since(start)
	require.NoError(srv.t, err, "keybroker %s:\n%s", strings.Join(args, " "), out)
	return took
}

// measure runs one GET /key window.
func (srv *scaleServer) measure(onMeasure func()) scaleStep {
	t := srv.t
	res, err := Run(context.Background(), Load{URL: srv.p.URL + "/api/v1/me/encryption-vault/key", Tokens: srv.b.tokens,
		Concurrency: srv.s.conns, Warmup: srv.s.warmup, Duration: srv.s.duration, OnMeasure: onMeasure})
	require.NoError(t, err)
	require.Positive(t, res.OK, "no fetch succeeded: %s\n%s", res.FirstError, srv.p.Tail())
	if res.Errors > 0 {
		t.Logf("%d errors, first: %s\n%s", res.Errors, res.FirstError, srv.p.Tail())
	}
	return scaleStep{rps: res.RPS(), p50: res.Percentile(50), p99: res.Percentile(99), max: res.Latencies[len(res.Latencies)-1], errors: res.Errors}
}

// probes times `audit status`, `kek status` and a readiness poll.
func (srv *scaleServer) probes() [3]time.Duration {
	auditStatus, kekStatus := srv.cli("audit", "status"), srv.cli("kek", "status")
	start := time.Now()
	resp, err := http.Get(srv.p.URL + "/readyz")
	require.NoError(srv.t, err)
	resp.Body.Close()
	require.Equal(srv.t, http.StatusOK, resp.StatusCode)
	return [3]time.Duration{auditStatus, kekStatus, time.Since(start)}
}

// scaleReport is the Markdown of one run.
func scaleReport(s scaleSettings, emptySteps, filledSteps []scaleStep, during scaleStep, emptyProbes, filledProbes [3]time.Duration,
	dropTook time.Duration, drop *broker.AuditUpkeepResult, verify scaleVerify, fill scaleFill, auditBytes, auditRows, vaultBytes int64) string {
	m := ThisMachine()
	m.LoadAfter = LoadAverage()
	var b strings.Builder
	fmt.Fprintf(&b, "Run %s on %s (%d cores, %.0f GiB), %s, Go %s; load average after: %s.\n\n",
		m.Date.Format(time.DateOnly), m.CPU, m.Cores, float64(m.MemoryBytes)/(1<<30), m.Kernel, m.Go, m.LoadAfter)
	fmt.Fprintf(&b, "Size: %s vaults and %s audit rows over %d days, filled by SQL in %s; %d users fetch (POST /init), %d connections; "+
		"%d rounds of one %s window on each server, alternating (empty, filled, then filled, empty, ...).\n\n",
		formatInt(s.vaults), formatInt(auditRows), s.days, fill.took.Round(time.Second), s.users, s.conns, s.rounds, s.duration)
	mean := func(steps []scaleStep) (m scaleStep) {
		for _, st := range steps {
			m.rps += st.rps / float64(len(steps))
			m.p50 += st.p50 / time.Duration(len(steps))
			m.p99 = max(m.p99, st.p99)
			m.max = max(m.max, st.max)
			m.errors += st.errors
		}
		return m
	}
	empty, filled := mean(emptySteps), mean(filledSteps)
	rounds := func(steps []scaleStep) string {
		var out []string
		for _, st := range steps {
			out = append(out, fmt.Sprintf("%.0f", st.rps))
		}
		return strings.Join(out, ", ")
	}
	b.WriteString("| measure | empty database | filled | ratio | target |\n|---|--:|--:|--:|---|\n")
	fmt.Fprintf(&b, "| `GET /key` throughput, mean of the rounds | %.0f req/s | %.0f req/s | %.2f× | ≥ 0.90× |\n", empty.rps, filled.rps, filled.rps/empty.rps)
	fmt.Fprintf(&b, "| each round (req/s) | %s | %s | | |\n", rounds(emptySteps), rounds(filledSteps))
	fmt.Fprintf(&b, "| `GET /key` p50 (mean) / worst p99 | %s / %s | %s / %s | | |\n", ms(empty.p50), ms(empty.p99), ms(filled.p50), ms(filled.p99))
	fmt.Fprintf(&b, "| errors | %d | %d | | 0 |\n", empty.errors, filled.errors)
	for i, name := range []string{"`keybroker audit status` (whole command)", "`keybroker kek status` (whole command)", "readiness poll (`GET /readyz`)"} {
		fmt.Fprintf(&b, "| %s | %s | %s | | < 1 s |\n", name, ms(emptyProbes[i]), ms(filledProbes[i]))
	}
	b.WriteString("\n| while dropping the partitions past the retention | |\n|---|--:|\n")
	fmt.Fprintf(&b, "| upkeep pass (detach + drop %d partition(s), %s rows by estimate; target < 1 s) | %s |\n",
		len(drop.Dropped), formatInt(drop.Deleted), ms(dropTook))
	fmt.Fprintf(&b, "| `GET /key` in the same window | %s |\n", during)
	fmt.Fprintf(&b, "| ratio to the filled run | %.2f× |\n", during.rps/filled.rps)
	b.WriteString("\n| tamper evidence on the filled database | |\n|---|--:|\n")
	fmt.Fprintf(&b, "| sealing every row, as a server's sealer does (`broker.SealAudit`, %d checkpoints; the filled rows carry no MAC: sealed late) | %s (%.0f rows/s) |\n",
		verify.checkpoints, verify.sealTook.Round(time.Millisecond), float64(auditRows)/verify.sealTook.Seconds())
	fmt.Fprintf(&b, "| `keybroker audit verify` (whole command): %s rows checked (%s verified by their MAC, %s sealed late), no finding | %s (%.0f rows/s) |\n",
		formatInt(verify.verified+verify.late), formatInt(verify.verified), formatInt(verify.late), verify.verifyTook.Round(time.Millisecond), verify.rowsPerSecond())
	b.WriteString("\n| database size | |\n|---|--:|\n")
	if auditRows > 0 {
		fmt.Fprintf(&b, "| audit table with its indexes | %s (%s per million rows) |\n", bytesText(auditBytes), bytesText(auditBytes*1_000_000/auditRows))
	}
	if fill.todayRows > 0 {
		fmt.Fprintf(&b, "| today's partition, written as fetches write it: %s rows with its indexes | %s (%s per million fetches) |\n",
			formatInt(fill.todayRows), bytesText(fill.todaySize), bytesText(fill.todaySize*1_000_000/fill.todayRows))
	}
	fmt.Fprintf(&b, "| vaults with their indexes | %s |\n", bytesText(vaultBytes))
	return b.String()
}

func formatInt(n int64) string {
	s := strconv.FormatInt(n, 10)
	var out []byte
	for i := range len(s) {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, ' ')
		}
		out = append(out, s[i])
	}
	return string(out)
}

func bytesText(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	default:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
}
