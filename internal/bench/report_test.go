package bench

import (
	"net/http"
	"net/http/httptest"
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
		{Config: "a", Concurrency: 16, Result: &Result{OK: 100, Elapsed: time.Second, Latencies: []time.Duration{time.Millisecond}}, ServerLatencies: []time.Duration{time.Millisecond / 2}, PeakRSS: 32 << 20, KMSCalls: 1, KMSProbes: 2, FloorRPS: 50, CPU: 5 * time.Millisecond},
		{Config: "floor", Concurrency: 16, Result: &Result{OK: 50, Elapsed: time.Second}, KMSCalls: -1},
	}
	table := Table(rows)
	require.Contains(t, table, "| a | 16 | 100 | 1.00 ms | 1.00 ms | 1.00 ms | 0.50 ms | 32.0 MiB | 50 µs | 2.00× | 100.0 (1; 2) | 0 |")
	require.Contains(t, table, "| floor | 16 | 50 |")
	require.Contains(t, table, "| — | — | — | — | — | 0 |", "the floor has no server-side figures")
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
	d, ok := accessLatency([]byte(`{"time":"x","level":"INFO","msg":"request","status":200,"latency":1234567,"user_id":"u"}`))
	require.True(t, ok)
	require.Equal(t, 1234567*time.Nanosecond, d)
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
