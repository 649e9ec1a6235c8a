package bench

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// wrkScript is the Lua of a wrk run: every thread formats one request
// per token once (init), then hands out a random one per request, and
// the run's totals and latency percentiles go to the file named by
// WRK_OUT. Debian's wrk 4.1 does not give Lua the raw latency samples,
// only percentiles: the Result is rebuilt from the 1000 quantiles
// 0.1 %, 0.2 %, … 100 %, which is exact for p50, p99 and p99.9.
const wrkScript = `
local reqs = {}
function init(args)
  for line in io.lines(args[1]) do
    reqs[#reqs + 1] = wrk.format("GET", nil, {Authorization = "Bearer " .. line})
  end
end
function request()
  return reqs[math.random(#reqs)]
end
function done(summary, latency, requests)
  local f = io.open(os.getenv("WRK_OUT"), "w")
  local e = summary.errors
  f:write(string.format("requests %d\nconnect %d\nread %d\nwrite %d\nstatus %d\ntimeout %d\nduration %d\n",
    summary.requests, e.connect, e.read, e.write, e.status, e.timeout, summary.duration))
  for k = 1, 1000 do
    f:write(string.format("q %d %d\n", k, latency:percentile(k / 10)))
  end
  f:close()
end
`

// WrkPath returns the wrk binary to drive closed-loop steps with, or ""
// when there is none (KEYBROKER_BENCH_GENERATOR=go asks for the Go
// generator even where wrk is installed).
func WrkPath() string {
	if os.Getenv("KEYBROKER_BENCH_GENERATOR") == "go" {
		return ""
	}
	p, err := exec.LookPath("wrk")
	if err != nil {
		return ""
	}
	return p
}

// Generator names what drove a step, for the table.
const (
	GeneratorWrk     = "wrk"
	GeneratorGo      = "Go"
	GeneratorPgbench = "pgbench"
)

// RunWrk drives one closed-loop step with wrk (one thread, Concurrency
// connections): a warm-up run, OnMeasure, then the measured run, whose
// GeneratorCPU is wrk's own user and system time.
func RunWrk(ctx context.Context, wrk string, l Load, dir string) (*Result, error) {
	if l.Rate > 0 || l.Sequential {
		return nil, fmt.Errorf("bench: wrk drives closed-loop steps with random tokens only")
	}
	tokens := filepath.Join(dir, "wrk-tokens")
	if _, err := os.Stat(tokens); err != nil {
		if err := os.WriteFile(tokens, []byte(strings.Join(l.Tokens, "\n")+"\n"), 0o600); err != nil {
			return nil, err
		}
	}
	script := filepath.Join(dir, "wrk.lua")
	if err := os.WriteFile(script, []byte(wrkScript), 0o600); err != nil {
		return nil, err
	}
	if l.Warmup > 0 {
		if _, err := wrkOnce(ctx, wrk, script, tokens, l.URL, l.Concurrency, l.Warmup, dir); err != nil {
			return nil, err
		}
	}
	if l.OnMeasure != nil {
		l.OnMeasure()
	}
	return wrkOnce(ctx, wrk, script, tokens, l.URL, l.Concurrency, l.Duration, dir)
}

func wrkOnce(ctx context.Context, wrk, script, tokens, url string, conns int, d time.Duration, dir string) (*Result, error) {
	out := filepath.Join(dir, "wrk-out")
	_ = os.Remove(out)
	secs := max(1, int(d.Round(time.Second)/time.Second))
	cmd := exec.CommandContext(ctx, wrk, "-t1", "-c"+strconv.Itoa(conns), "-d"+strconv.Itoa(secs)+"s",
		"--timeout", "30s", "-s", script, url, "--", tokens)
	cmd.Env = append(os.Environ(), "WRK_OUT="+out)
	text, err := cmd.CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("bench: wrk: %w\n%s", err, text)
	}
	var cpu time.Duration
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		cpu = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	res, err := readWrkOut(out)
	if err != nil {
		return nil, err
	}
	res.GeneratorCPU = cpu
	return res, nil
}

// readWrkOut reads the file wrkScript's done writes.
func readWrkOut(name string) (*Result, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, fmt.Errorf("bench: wrk wrote no summary: %w", err)
	}
	defer f.Close()
	totals := map[string]int64{}
	var quantiles []time.Duration
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		switch {
		case len(fields) == 2:
			n, err := strconv.ParseInt(fields[1], 10, 64)
			if err != nil {
				return nil, fmt.Errorf("bench: wrk summary %q: %w", sc.Text(), err)
			}
			totals[fields[0]] = n
		case len(fields) == 3 && fields[0] == "q":
			us, err := strconv.ParseFloat(fields[2], 64)
			if err != nil {
				return nil, fmt.Errorf("bench: wrk summary %q: %w", sc.Text(), err)
			}
			quantiles = append(quantiles, time.Duration(us*float64(time.Microsecond)))
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(quantiles) != 1000 || totals["duration"] <= 0 {
		return nil, fmt.Errorf("bench: wrk summary incomplete (%d quantiles)", len(quantiles))
	}
	res := &Result{Elapsed: time.Duration(totals["duration"]) * time.Microsecond}
	res.Errors = int(totals["connect"] + totals["read"] + totals["write"] + totals["status"] + totals["timeout"])
	res.OK = int(totals["requests"] - totals["status"])
	if res.Errors > 0 {
		res.FirstError = fmt.Sprintf("wrk: %d connect, %d read, %d write, %d non-2xx, %d timeout",
			totals["connect"], totals["read"], totals["write"], totals["status"], totals["timeout"])
	}
	res.Latencies = spreadQuantiles(quantiles, res.OK)
	return res, nil
}

// spreadQuantiles makes n sorted samples whose nearest-rank percentiles
// at every 0.1 % are the given quantiles.
func spreadQuantiles(q []time.Duration, n int) []time.Duration {
	out := make([]time.Duration, 0, n)
	for k := range q {
		upto := (n*(k+1) + len(q) - 1) / len(q)
		for len(out) < upto {
			out = append(out, q[k])
		}
	}
	return out
}

// processCPU is this process's user and system CPU time so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
