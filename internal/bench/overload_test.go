package bench

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"time"
)

// Past saturation (issue 22, item 4): the PostgreSQL + env KEK rows (and
// the KEYBROKER_BENCH_OLD_BIN row) are driven at overloadConns
// connections, closed loop, and paced at overloadPace times their peak
// with as many workers. KEYBROKER_BENCH_OVERLOAD=0 skips these steps.
const (
	overloadConns = 1024
	overloadPace  = 1.5
	// requestTimeout is keybroker's vaultapi.Config.RequestTimeout: no
	// answer may take longer.
	requestTimeout = 10 * time.Second
)

// The targets of issue 22, read off the table like those of issue 8.
const (
	targetCPUHalf      = 0.5 // server CPU per fetch at 16 conns, new over old
	targetFloor16      = 2.3
	targetFloor1       = 1.0
	targetOverloadPeak = 0.9 // throughput past saturation over peak
)

func overloadEnabled() bool { return os.Getenv("KEYBROKER_BENCH_OVERLOAD") != "0" }

// overloadSteps runs the steps past saturation on the env-KEK servers.
func (b *bench) overloadSteps(servers []*server) {
	if !overloadEnabled() {
		return
	}
	for _, srv := range servers {
		if srv.key != rowPGEnv && srv.title != oldTitle {
			continue
		}
		b.rows = append(b.rows, b.step(srv.title, srv.p, overloadConns, 0))
		if peak := b.halfPeak[srv.title] * 2; peak > 0 {
			b.rows = append(b.rows, b.step(srv.title, srv.p, overloadConns, peak*overloadPace))
		}
	}
}

// peakOf is title's best closed-loop throughput below overloadConns.
func (b *bench) peakOf(title string) float64 {
	peak := 0.0
	for _, r := range b.rows {
		if r.Config == title && r.Rate == 0 && r.Concurrency < overloadConns {
			peak = max(peak, r.Result.RPS())
		}
	}
	return peak
}

func perRequest(d time.Duration, r *Row) float64 {
	if r == nil || r.Result.OK == 0 {
		return 0
	}
	return float64(d/time.Microsecond) / float64(r.Result.OK)
}

// targets22 renders the verdicts on issue 22's targets.
func (b *bench) targets22() string {
	var out strings.Builder
	env := rowTitles[rowPGEnv]
	newRow, oldRow := b.closedRow(env, 16), b.closedRow(oldTitle, 16)
	if newRow != nil && oldRow != nil && newRow.CPU > 0 && oldRow.CPU > 0 {
		n, o := perRequest(newRow.CPU, newRow), perRequest(oldRow.CPU, oldRow)
		fmt.Fprintf(&out, "- server CPU per fetch at 16 connections at most %.0f %% of KEYBROKER_BENCH_OLD_BIN's, same run: %.0f µs against %.0f µs, %.2f× (%s)\n",
			targetCPUHalf*100, n, o, n/o, verdict(n/o <= targetCPUHalf))
	}
	for _, c := range []struct {
		conns int
		ratio float64
	}{{1, targetFloor1}, {16, targetFloor16}} {
		for _, title := range []string{env, oldTitle} {
			if r := b.closedRow(title, c.conns); r != nil && r.FloorRatio() > 0 {
				fmt.Fprintf(&out, "- %s at least %.1f× the pgbench floor at %d connections: %.2f× (%s)\n",
					title, c.ratio, c.conns, r.FloorRatio(), verdict(r.FloorRatio() >= c.ratio))
			}
		}
	}
	if r, f := b.closedRow(env, 16), b.closedRow(floorTitle, 16); r != nil && f != nil && r.Result.GeneratorCPU > 0 {
		fmt.Fprintf(&out, "- the generator costs less than what it measures: at 16 connections %s %.0f µs of CPU per request against the server's %.0f µs (pgbench's client: %.0f µs per transaction)\n",
			r.Generator, perRequest(r.Result.GeneratorCPU, r), perRequest(r.CPU, r), perRequest(f.Result.GeneratorCPU, f))
	}
	for _, title := range []string{env, oldTitle} {
		peak := b.peakOf(title)
		if peak == 0 {
			continue
		}
		for _, r := range b.rows {
			if r.Config != title || r.Concurrency != overloadConns {
				continue
			}
			step := fmt.Sprintf("%d connections", overloadConns)
			if r.Rate > 0 {
				step = fmt.Sprintf("paced at %.0f req/s (%.1f× peak, %d workers)", r.Rate, overloadPace, overloadConns)
			}
			// The server's own time (its access log): a paced step's
			// latencies count from when a request was due, the
			// generator's queue included.
			worst := time.Duration(0)
			if len(r.ServerLatencies) > 0 {
				worst = slices.Max(r.ServerLatencies)
			}
			ratio := r.Result.RPS() / peak
			fmt.Fprintf(&out, "- %s past saturation, %s: %.0f req/s, %.2f× its peak of %.0f (%s); slowest answer (server side) %s, under the %s deadline (%s); %d refused (503 with Retry-After) or failed; peak RSS %.1f MiB\n",
				title, step, r.Result.RPS(), ratio, peak, verdict(ratio >= targetOverloadPeak), ms(worst), requestTimeout,
				verdict(worst < requestTimeout), r.Result.Errors, float64(r.PeakRSS)/(1<<20))
		}
	}
	return out.String()
}
