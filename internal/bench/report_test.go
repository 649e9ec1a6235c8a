package bench

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestPercentileNearestRank(t *testing.T) {
	var lat []time.Duration
	for i := 1; i <= 1000; i++ {
		lat = append(lat, time.Duration(i)*time.Millisecond)
	}
	r := &Result{OK: 1000, Elapsed: 2 * time.Second, Latencies: lat}
	require.Equal(t, 500*time.Millisecond, r.Percentile(50))
	require.Equal(t, 990*time.Millisecond, r.Percentile(99))
	require.Equal(t, 999*time.Millisecond, r.Percentile(99.9))
	require.Equal(t, 1000*time.Millisecond, r.Percentile(100))
	require.InDelta(t, 500.0, r.RPS(), 0.001)
	require.Zero(t, (&Result{}).Percentile(99))
}

func TestReplaceSectionKeepsProse(t *testing.T) {
	doc := "# Title\n\nprose\n<!-- begin bench:table -->\nold\n<!-- end bench:table -->\nafter\n"
	got := ReplaceSection(doc, "table", "new")
	require.Equal(t, "# Title\n\nprose\n<!-- begin bench:table -->\nnew\n<!-- end bench:table -->\nafter\n", got)
	appended := ReplaceSection("prose", "micro", "m\n")
	require.Equal(t, "prose\n\n<!-- begin bench:micro -->\nm\n<!-- end bench:micro -->\n", appended)
}

func TestTableColumns(t *testing.T) {
	rows := []*Row{
		{Config: "a", Concurrency: 16, Result: &Result{OK: 100, Elapsed: time.Second, Latencies: []time.Duration{time.Millisecond}, GeneratorCPU: 2 * time.Millisecond}, ServerLatencies: []time.Duration{time.Millisecond / 2}, PeakRSS: 32 << 20, KMSCalls: 1, KMSProbes: 2, FloorRPS: 50, CPU: 5 * time.Millisecond, DBCPU: 4 * time.Millisecond, Generator: GeneratorWrk},
		{Config: "floor", Concurrency: 16, Result: &Result{OK: 50, Elapsed: time.Second}, KMSCalls: -1, DBCPU: 10 * time.Millisecond},
	}
	table := Table(rows)
	require.Contains(t, table, "| a | 16 | 100 | 1.00 ms | 1.00 ms | 1.00 ms | 0.50 ms | 32.0 MiB | 50 µs | 40 µs | wrk | 20 µs | 2.00× | 100.0 (1; 2) | 0 |")
	require.Contains(t, table, "| floor | 16 | 50 |")
	require.Contains(t, table, "| — | — | — | 200 µs | — | — | — | — | 0 |", "the floor has PostgreSQL's CPU and no server-side figures")
	require.Equal(t, 4, strings.Count(table, "\n"))
}

func TestFloorScriptNamesTheSchema(t *testing.T) {
	script := FloorScript("kb", 10)
	require.Contains(t, script, `\set uid random(1, 10)`)
	require.Contains(t, script, `FROM "kb"."encryption_vaults"`)
	require.Contains(t, script, `INSERT INTO "kb"."encryption_vault_audit"`)
	require.Equal(t, "bench-user-7", UserID(7))
}

func TestParseBenchLine(t *testing.T) {
	name, m, ok := parseBenchLine("BenchmarkAuditAppend/rows=16-2   \t    1088\t    964885 ns/op\t     60305 ns/row\t   17382 B/op\t     219 allocs/op")
	require.True(t, ok)
	require.Equal(t, "BenchmarkAuditAppend/rows=16", name)
	require.Equal(t, map[string]string{"ns/op": "964885", "ns/row": "60305", "B/op": "17382", "allocs/op": "219"}, m)
	_, _, ok = parseBenchLine("PASS")
	require.False(t, ok)
	_, _, ok = parseBenchLine("ok  \tgithub.com/keybroker/keybroker/pgstore\t7.542s")
	require.False(t, ok)
}

func TestAccessLatency(t *testing.T) {
	d, ok := accessLatency([]byte(`{"time":"x","level":"INFO","msg":"request","status":200,"latency":0.001234567,"user_id":"u"}`))
	require.True(t, ok)
	require.Equal(t, 1234567*time.Nanosecond, d)
	d, ok = accessLatency([]byte(`{"latency":2e-05}`))
	require.True(t, ok)
	require.Equal(t, 20*time.Microsecond, d)
	_, ok = accessLatency([]byte(`{"msg":"keybroker serving","addr":"127.0.0.1:1"}`))
	require.False(t, ok)
}

func TestGroupCommitsFromMetrics(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`# TYPE keybroker_group_commit_size histogram
keybroker_group_commit_size_bucket{kind="fetch",le="+Inf"} 4
keybroker_group_commit_size_sum{kind="fetch"} 10
keybroker_group_commit_size_count{kind="fetch"} 4
keybroker_group_commit_size_bucket{kind="audit",le="+Inf"} 7
keybroker_group_commit_size_sum{kind="audit"} 70
keybroker_group_commit_size_count{kind="audit"} 7
# TYPE keybroker_group_commit_duration_seconds histogram
keybroker_group_commit_duration_seconds_bucket{kind="fetch",outcome="ok",le="+Inf"} 3
keybroker_group_commit_duration_seconds_sum{kind="fetch",outcome="ok"} 0.003
keybroker_group_commit_duration_seconds_count{kind="fetch",outcome="ok"} 3
keybroker_group_commit_duration_seconds_bucket{kind="fetch",outcome="error",le="+Inf"} 1
keybroker_group_commit_duration_seconds_sum{kind="fetch",outcome="error"} 0.001
keybroker_group_commit_duration_seconds_count{kind="fetch",outcome="error"} 1
`))
	}))
	t.Cleanup(srv.Close)
	g, err := (&Process{URL: srv.URL}).GroupCommits(t.Context())
	require.NoError(t, err)
	require.Equal(t, GroupCommits{Commits: 4, Requests: 10, Took: 4 * time.Millisecond}, g)
	require.Equal(t, "4 commits, 2.5 requests and 1.00 ms each", g.String())
	require.Equal(t, GroupCommits{Commits: 1, Requests: 2, Took: time.Millisecond}, g.Sub(GroupCommits{Commits: 3, Requests: 8, Took: 3 * time.Millisecond}))
}

func TestDamonDescribesEachMonitor(t *testing.T) {
	root := t.TempDir()
	write := func(rel, content string) {
		path := filepath.Join(root, rel)
		require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
		require.NoError(t, os.WriteFile(path, []byte(content+"\n"), 0o644))
	}
	write("nr_kdamonds", "1")
	write("0/state", "on")
	write("0/contexts/0/operations", "paddr")
	write("0/contexts/0/schemes/0/action", "pageout")
	require.Equal(t, "kdamond 0 on (paddr, pageout)", damon(root))
	require.Empty(t, damon(filepath.Join(root, "absent")))
	m := Machine{Reclaim: damon(root)}
	require.Contains(t, m.Markdown(), "- kernel memory monitor (DAMON): kdamond 0 on (paddr, pageout)\n")
	require.NotContains(t, Machine{}.Markdown(), "DAMON")
}

// TestPacedRowsSortAndReadAgainstTheirFloor: paced steps follow the
// closed-loop ones by pace, each beside pgbench at the same pace, and the
// p99 target names pgbench's p99 at the half-peak pace.
func TestPacedRowsSortAndReadAgainstTheirFloor(t *testing.T) {
	env := rowTitles[rowPGEnv]
	res := func(p99 time.Duration) *Result {
		return &Result{OK: 100, Elapsed: time.Second, Latencies: []time.Duration{p99}}
	}
	sqlite := rowTitles[rowSQLite]
	b := &bench{halfPeak: map[string]float64{env: 500, sqlite: 300}, rows: []*Row{
		{Config: floorTitle, Concurrency: 8, Rate: 500, Result: res(40 * time.Millisecond)},
		{Config: env, Concurrency: 64, Rate: 500, Result: res(6 * time.Millisecond)},
		{Config: env, Concurrency: 64, Rate: 100, Result: res(2 * time.Millisecond)},
		{Config: floorTitle, Concurrency: 8, Rate: 100, Result: res(9 * time.Millisecond)},
		{Config: env, Concurrency: 16, Result: res(time.Millisecond)},
		{Config: floorTitle, Concurrency: 16, Result: res(time.Millisecond)},
	}}
	b.sortRows()
	b.rows = append(b.rows, &Row{Config: sqlite, Concurrency: 64, Rate: 300, Result: res(50 * time.Millisecond)})
	var order []string
	for _, r := range b.rows {
		order = append(order, fmt.Sprintf("%s/%d/%.0f", r.Config, r.Concurrency, r.Rate))
	}
	require.Equal(t, []string{env + "/16/0", floorTitle + "/16/0", env + "/64/100", floorTitle + "/8/100",
		env + "/64/500", floorTitle + "/8/500", sqlite + "/64/300"}, order)
	targets := b.targets()
	require.Contains(t, targets, env+" 6.00 ms at 500 req/s against pgbench's 40.00 ms with 8 connections: 0.15× (met)")
	require.Contains(t, targets, sqlite+" 50.00 ms at 300 req/s (no pgbench step at this pace: reported only)", "no floor at that pace: no verdict")
	require.NotContains(t, targets, "25 % of peak", "no step at 25 %: not listed")
	require.Contains(t, targets, "10 % of peak (100 req/s) 2.00 ms against pgbench's 9.00 ms; 50 % of peak (500 req/s) 6.00 ms against pgbench's 40.00 ms")
}

func TestSpreadQuantiles(t *testing.T) {
	q := make([]time.Duration, 1000)
	for k := range q {
		q[k] = time.Duration(k+1) * time.Microsecond
	}
	for _, n := range []int{1, 999, 1000, 4321} {
		got := spreadQuantiles(q, n)
		require.Len(t, got, n)
		require.True(t, slices.IsSorted(got))
		if n >= 1000 {
			require.Equal(t, 500*time.Microsecond, percentile(got, 50), "n=%d", n)
			require.Equal(t, 990*time.Microsecond, percentile(got, 99), "n=%d", n)
			require.Equal(t, 999*time.Microsecond, percentile(got, 99.9), "n=%d", n)
		}
	}
}

func TestReadWrkOut(t *testing.T) {
	var b strings.Builder
	b.WriteString("requests 2010\nconnect 0\nread 1\nwrite 0\nstatus 10\ntimeout 0\nduration 2000000\n")
	for k := 1; k <= 1000; k++ {
		fmt.Fprintf(&b, "q %d %d\n", k, k*10)
	}
	name := filepath.Join(t.TempDir(), "out")
	require.NoError(t, os.WriteFile(name, []byte(b.String()), 0o600))
	res, err := readWrkOut(name)
	require.NoError(t, err)
	require.Equal(t, 2000, res.OK)
	require.Equal(t, 11, res.Errors)
	require.Equal(t, 2*time.Second, res.Elapsed)
	require.InDelta(t, 1000, res.RPS(), 0.001)
	require.Equal(t, 9900*time.Microsecond, res.Percentile(99))
	require.NoError(t, os.WriteFile(name, []byte("requests 1\n"), 0o600))
	_, err = readWrkOut(name)
	require.Error(t, err, "a summary without its quantiles")
}
