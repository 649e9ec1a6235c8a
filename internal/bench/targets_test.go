package bench

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// The targets, read off the table and reported as met or missed; they
// never fail a test. Speed is judged against what ran beside keybroker in
// the same run at the same pace (the pgbench floor, another row), never
// against an absolute time: absolute times on a shared machine move from
// run to run (docs/benchmarks.md).
const (
	targetFloorRatio  = 1.0
	targetCachedRatio = 0.9
	targetKMSPer10k   = 1.0
	// targetP99FloorRatio bounds keybroker's p99 over pgbench's p99 running
	// the same SQL at the same pace.
	targetP99FloorRatio = 1.0
	targetRSS           = 64 << 20
	targetRSSConns      = 256
	targetStartToReady  = 200 * time.Millisecond
)

func verdict(ok bool) string {
	if ok {
		return "met"
	}
	return "**missed**"
}

func (b *bench) closedRow(title string, conns int) *Row {
	for _, r := range b.rows {
		if r.Config == title && r.Concurrency == conns && r.Rate == 0 {
			return r
		}
	}
	return nil
}

// pacedRow is title's paced step at rate.
func (b *bench) pacedRow(title string, rate float64) *Row {
	for _, r := range b.rows {
		if r.Config == title && r.Rate > 0 && r.Rate == rate {
			return r
		}
	}
	return nil
}

// targets renders the verdict on each target from this run's rows.
func (b *bench) targets() string {
	var out strings.Builder
	env := rowTitles[rowPGEnv]
	cached := rowTitles[rowAWSCached]

	var parts []string
	for _, c := range b.s.conns {
		if r := b.closedRow(env, c); r != nil && r.FloorRatio() > 0 {
			parts = append(parts, fmt.Sprintf("%d conns %.2f× (%s)", c, r.FloorRatio(), verdict(r.FloorRatio() >= targetFloorRatio)))
		}
	}
	if len(parts) > 0 {
		fmt.Fprintf(&out, "- PostgreSQL + env KEK at least %.1f× the pgbench floor: %s\n", targetFloorRatio, strings.Join(parts, ", "))
	}

	parts = parts[:0]
	worstKMS := -1.0
	for _, c := range b.s.conns {
		r, base := b.closedRow(cached, c), b.closedRow(env, c)
		if r == nil || base == nil {
			continue
		}
		ratio := r.Result.RPS() / base.Result.RPS()
		parts = append(parts, fmt.Sprintf("%d conns %.2f× (%s)", c, ratio, verdict(ratio >= targetCachedRatio)))
		worstKMS = max(worstKMS, r.KMSPer10k())
	}
	if len(parts) > 0 {
		fmt.Fprintf(&out, "- cached KMS mode at least %.1f× the env-KEK row: %s\n", targetCachedRatio, strings.Join(parts, ", "))
		fmt.Fprintf(&out, "- cached KMS mode at most %.0f KMS call per 10 000 requests after warm-up (key operations; the status probe's DescribeKey, once a minute whatever the load, is listed apart in the table): at most %.1f (%s)\n",
			targetKMSPer10k, worstKMS, verdict(worstKMS <= targetKMSPer10k))
	}

	parts = parts[:0]
	for _, title := range allTitles() {
		r := b.pacedRow(title, b.halfPeak[title])
		if r == nil {
			continue
		}
		p99 := r.Result.Percentile(99)
		part := fmt.Sprintf("%s %s at %.0f req/s", title, ms(p99), r.Rate)
		if f := b.pacedRow(floorTitle, r.Rate); f != nil && f.Result.Percentile(99) > 0 {
			ratio := float64(p99) / float64(f.Result.Percentile(99))
			part += fmt.Sprintf(" against pgbench's %s with %d connections: %.2f× (%s)", ms(f.Result.Percentile(99)), f.Concurrency,
				ratio, verdict(ratio <= targetP99FloorRatio && r.Result.Errors == 0))
		} else {
			part += " (no pgbench step at this pace: reported only)"
		}
		parts = append(parts, part)
	}
	if len(parts) > 0 {
		fmt.Fprintf(&out, "- p99 at half of peak throughput at most %.1f× the p99 of pgbench running the same SQL at the same pace (paced, %d workers, latency from when each request was due): %s\n",
			targetP99FloorRatio, pacedConcurrency, strings.Join(parts, "; "))
	}
	if sweep := b.paceSweep(rowTitles[rowPGEnv]); sweep != "" {
		out.WriteString(sweep)
	}
	out.WriteString(b.peerTargets())

	parts = parts[:0]
	for _, title := range allTitles() {
		if r := b.closedRow(title, targetRSSConns); r != nil {
			parts = append(parts, fmt.Sprintf("%s %.1f MiB (%s)", title, float64(r.PeakRSS)/(1<<20), verdict(r.PeakRSS < targetRSS)))
		}
	}
	if len(parts) > 0 {
		fmt.Fprintf(&out, "- server RSS under %d MiB with %d connections: %s\n", targetRSS>>20, targetRSSConns, strings.Join(parts, "; "))
	}

	parts = parts[:0]
	for _, title := range allTitles() {
		if d, ok := b.startToReady[title]; ok {
			parts = append(parts, fmt.Sprintf("%s %s (%s)", title, ms(d), verdict(d < targetStartToReady)))
		}
	}
	if len(parts) > 0 {
		fmt.Fprintf(&out, "- start to ready under %s with migrations applied (exec to the \"keybroker serving\" line, JWKS fetch included): %s\n",
			ms(targetStartToReady), strings.Join(parts, "; "))
	}
	return out.String()
}

// paceSweep renders, for reading beside the p99 target, the p99 of
// title's paced steps at each fraction of its peak and of pgbench at the
// same paces (it is no target of its own).
func (b *bench) paceSweep(title string) string {
	half := b.halfPeak[title]
	if half == 0 {
		return ""
	}
	var parts []string
	for _, f := range pacedFractions {
		rate := half * 2 * f
		r := b.pacedRow(title, rate)
		if r == nil {
			continue
		}
		part := fmt.Sprintf("%.0f %% of peak (%.0f req/s) %s", f*100, rate, ms(r.Result.Percentile(99)))
		if fl := b.pacedRow(floorTitle, rate); fl != nil {
			part += fmt.Sprintf(" against pgbench's %s", ms(fl.Result.Percentile(99)))
		}
		parts = append(parts, part)
	}
	if len(parts) < 2 {
		return ""
	}
	return fmt.Sprintf("- beside the p99 target, %s paced at fractions of its peak: p99 at %s\n", title, strings.Join(parts, "; "))
}

func allTitles() []string {
	var titles []string
	for _, r := range allRows {
		titles = append(titles, rowTitles[r])
	}
	return titles
}

// MicroPackages hold the Go micro-benchmarks of the hot pieces; the
// Makefile's bench-micro target lists the same.
var MicroPackages = []string{"./kekproviders/localkek", "./broker", "./vaultapi/jwtauth", "./vaultapi", "./pgstore", "./internal/bench"}

// benchName matches a result line's name, without the GOMAXPROCS suffix.
var benchName = regexp.MustCompile(`^(Benchmark\S+?)(?:-\d+)?$`)

// parseBenchLine reads "BenchmarkX-2  N  v unit  v unit …" into the name
// and its metrics by unit.
func parseBenchLine(line string) (string, map[string]string, bool) {
	fields := strings.Fields(line)
	if len(fields) < 4 || len(fields)%2 != 0 {
		return "", nil, false
	}
	m := benchName.FindStringSubmatch(fields[0])
	if m == nil {
		return "", nil, false
	}
	metrics := map[string]string{}
	for i := 2; i+1 < len(fields); i += 2 {
		metrics[fields[i+1]] = fields[i]
	}
	return m[1], metrics, true
}

// runMicro runs the micro-benchmarks and renders their allocation counts.
func runMicro(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	goTool := os.Getenv("GO")
	if goTool == "" {
		goTool = "go"
	}
	args := append([]string{"test", "-run", "^$", "-bench", ".", "-benchmem", "-count", "1"}, MicroPackages...)
	cmd := exec.Command(goTool, args...)
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	var b strings.Builder
	b.WriteString("| package | benchmark | ns/op | B/op | allocs/op | other |\n|---|---|--:|--:|--:|--:|\n")
	pkg := ""
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, "pkg: "); ok {
			pkg = strings.TrimPrefix(rest, "github.com/keybroker/keybroker/")
			continue
		}
		if name, metrics, ok := parseBenchLine(line); ok {
			var other []string
			for unit, v := range metrics {
				if unit != "ns/op" && unit != "B/op" && unit != "allocs/op" {
					other = append(other, v+" "+unit)
				}
			}
			slices.Sort(other)
			fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s |\n", pkg, name,
				metrics["ns/op"], metrics["B/op"], metrics["allocs/op"], strings.Join(other, ", "))
		}
	}
	return b.String()
}
