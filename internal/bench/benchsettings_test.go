package bench

import (
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// What a bench run measures, read from KEYBROKER_BENCH_* (see the Makefile's bench target).

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
	paced    bool          // KEYBROKER_BENCH_PACED=0 skips the paced steps
	// oldBin, KEYBROKER_BENCH_OLD_BIN, is another keybroker binary (an
	// earlier commit's) run as a second PostgreSQL + env KEK row beside
	// the first, step by step: a change is read as a ratio in one run.
	oldBin string
}

var allRows = []string{rowPGEnv, rowAWSDirect, rowAWSCached, rowSQLite}

var rowTitles = map[string]string{
	rowPGEnv:     "PostgreSQL + env KEK",
	rowAWSDirect: "PostgreSQL + AWS KMS direct (cache=off)",
	rowAWSCached: "PostgreSQL + AWS KMS cached",
	rowSQLite:    "SQLite + env KEK",
}

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
	s.paced = os.Getenv("KEYBROKER_BENCH_PACED") != "0"
	s.oldBin = os.Getenv("KEYBROKER_BENCH_OLD_BIN")
	return s
}
