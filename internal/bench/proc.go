package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/keybroker/keybroker/broker"
)

// Process is a keybroker server running as a subprocess, so that its
// memory is its own: peak RSS is read from /proc/PID/status.
type Process struct {
	// URL is http://ADDR of the listener the server reported.
	URL string
	// StartToReady is the time from exec to the server's "keybroker
	// serving" log line, which it writes once it accepts connections.
	StartToReady time.Duration

	cmd    *exec.Cmd
	exited chan struct{}
	err    error // of Wait, valid after exited is closed

	mu        sync.Mutex
	tail      []string        // last log lines, for error reports
	errLines  int             // log lines at level ERROR
	recording bool            // keep access lines' latencies
	latencies []time.Duration // of access lines since RecordLatencies
}

// RecordLatencies starts keeping the latency of each access log line: the
// time the server spent on a request, from its handler chain's start to
// its answer, without the network and the client.
func (p *Process) RecordLatencies() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.recording, p.latencies = true, p.latencies[:0]
}

// ServerLatencies stops recording and returns the latencies recorded,
// sorted. The log is read behind the requests, so lines of the last
// requests may be missing.
func (p *Process) ServerLatencies() []time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := slices.Clone(p.latencies)
	p.recording, p.latencies = false, p.latencies[:0]
	slices.Sort(out)
	return out
}

// accessLatency reads the "latency" of an access log line: seconds, as a
// number, as keybroker's JSON logs write every duration.
func accessLatency(line []byte) (time.Duration, bool) {
	const key = `"latency":`
	i := bytes.Index(line, []byte(key))
	if i < 0 {
		return 0, false
	}
	rest := line[i+len(key):]
	end := bytes.IndexFunc(rest, func(r rune) bool {
		return (r < '0' || r > '9') && r != '.' && r != 'e' && r != 'E' && r != '-' && r != '+'
	})
	if end < 0 {
		end = len(rest)
	}
	if end == 0 {
		return 0, false
	}
	seconds, err := strconv.ParseFloat(string(rest[:end]), 64)
	return time.Duration(math.Round(seconds * float64(time.Second))), err == nil
}

// readyMessage is the log line keybroker serve writes once it listens.
const readyMessage = "keybroker serving"

// tailLines bounds the log lines kept for error reports.
const tailLines = 40

// StartProcess runs `bin serve` with exactly env (nothing is inherited)
// and waits, at most readyTimeout, for it to report its address.
func StartProcess(ctx context.Context, bin string, env []string, readyTimeout time.Duration) (*Process, error) {
	cmd := exec.Command(bin, "serve")
	cmd.Env = env
	// An os.Pipe, not cmd.StderrPipe: Wait must not close the read end
	// while the log reader is still behind.
	logr, logw, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = logw
	p := &Process{cmd: cmd, exited: make(chan struct{})}
	start := time.Now()
	err = cmd.Start()
	logw.Close() // the child holds its own copy
	if err != nil {
		logr.Close()
		return nil, fmt.Errorf("bench: start %s: %w", bin, err)
	}
	ready := make(chan string, 1)
	go func() {
		defer logr.Close()
		p.readLog(logr, ready)
	}()
	go func() {
		p.err = cmd.Wait()
		close(p.exited)
	}()
	timer := time.NewTimer(readyTimeout)
	defer timer.Stop()
	select {
	case addr := <-ready:
		p.StartToReady = time.Since(start)
		p.URL = "http://" + addr
		return p, nil
	case <-p.exited:
		return nil, fmt.Errorf("bench: keybroker exited before serving (%v):\n%s", p.err, p.Tail())
	case <-timer.C:
		p.Stop()
		return nil, fmt.Errorf("bench: keybroker not serving after %s:\n%s", readyTimeout, p.Tail())
	case <-ctx.Done():
		p.Stop()
		return nil, ctx.Err()
	}
}

// readLog follows the server's log: it finds the ready line, keeps the
// last lines and counts errors. The server logs no keys or tokens, so the
// lines may go into a test failure.
func (p *Process) readLog(r io.Reader, ready chan<- string) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	found := false
	for sc.Scan() {
		line := sc.Bytes()
		if !found && bytes.Contains(line, []byte(readyMessage)) {
			var entry struct {
				Msg  string `json:"msg"`
				Addr string `json:"addr"`
			}
			if json.Unmarshal(line, &entry) == nil && entry.Msg == readyMessage && entry.Addr != "" {
				found = true
				ready <- entry.Addr
			}
		}
		isError := bytes.Contains(line, []byte(`"level":"ERROR"`))
		p.mu.Lock()
		if isError {
			p.errLines++
		}
		if p.recording {
			if d, ok := accessLatency(line); ok {
				p.latencies = append(p.latencies, d)
			}
		}
		// Access lines are the bulk; keep them out of the tail unless
		// nothing else was logged.
		if isError || !bytes.Contains(line, []byte(`"msg":"request"`)) || len(p.tail) == 0 {
			if len(p.tail) == tailLines {
				p.tail = p.tail[1:]
			}
			p.tail = append(p.tail, string(line))
		}
		p.mu.Unlock()
	}
}

// Tail returns the last log lines the server wrote, other than access lines.
func (p *Process) Tail() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.tail, "\n")
}

// ErrorLines counts the server's log lines at level ERROR so far.
func (p *Process) ErrorLines() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.errLines
}

// PeakRSS returns the server's peak resident set size (VmHWM).
func (p *Process) PeakRSS() (int64, error) {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	for line := range strings.SplitSeq(string(status), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("bench: VmHWM %q: %w", rest, err)
			}
			return kb << 10, nil
		}
	}
	return 0, errors.New("bench: no VmHWM in /proc/PID/status")
}

// CPUTime returns the user plus system CPU time the server has used so
// far (/proc/PID/stat).
func (p *Process) CPUTime() (time.Duration, error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	_, cpu, err := statCPU(stat, false)
	return cpu, err
}

// statCPU reads a /proc/PID/stat: the command name (field 2) and the user
// plus system CPU time, with that of the waited-for children when
// children is set (fields 14–15, and 16–17; clock ticks of 10 ms).
func statCPU(stat []byte, children bool) (name string, cpu time.Duration, err error) {
	// The command name is in parentheses and may hold spaces: count
	// fields after its closing parenthesis.
	open, end := bytes.IndexByte(stat, '('), bytes.LastIndexByte(stat, ')')
	if open < 0 || end < open {
		return "", 0, errors.New("bench: malformed /proc/PID/stat")
	}
	fields := strings.Fields(string(stat[end+1:]))
	if len(fields) < 15 {
		return "", 0, errors.New("bench: short /proc/PID/stat")
	}
	// fields[0] is field 3 (state); utime is field 14.
	last := 13
	if children {
		last = 15
	}
	var ticks int64
	for _, f := range fields[11:last] {
		n, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			return "", 0, fmt.Errorf("bench: /proc/PID/stat: %w", err)
		}
		ticks += n
	}
	const tick = 10 * time.Millisecond // USER_HZ is 100 on Linux
	return string(stat[open+1 : end]), time.Duration(ticks) * tick, nil
}

// ResetPeakRSS starts a new peak RSS measurement (Linux ≥ 4.0: writing 5
// to clear_refs resets VmHWM to the current RSS), so each step reports
// its own peak rather than the process's lifetime peak.
func (p *Process) ResetPeakRSS() error {
	return os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", p.cmd.Process.Pid), []byte("5"), 0)
}

// Stop sends SIGTERM, waits for a graceful exit for a bounded time and
// kills the server if it is still running then.
func (p *Process) Stop() {
	select {
	case <-p.exited:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	timer := time.NewTimer(30 * time.Second)
	defer timer.Stop()
	select {
	case <-p.exited:
	case <-timer.C:
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

// GroupCommits is the server's keybroker_group_commit_* totals for the
// fetch kind, read from its /metrics: commits made, requests they
// carried and the store's time for them.
type GroupCommits struct {
	Commits  uint64
	Requests float64
	Took     time.Duration
}

// String is "N commits, R requests each, T each", or "" without commits.
func (g GroupCommits) String() string {
	if g.Commits == 0 {
		return ""
	}
	return fmt.Sprintf("%d commits, %.1f requests and %s each", g.Commits, g.Requests/float64(g.Commits),
		ms(g.Took/time.Duration(g.Commits)))
}

// Sub is the commits between before and g.
func (g GroupCommits) Sub(before GroupCommits) GroupCommits {
	return GroupCommits{Commits: g.Commits - before.Commits, Requests: g.Requests - before.Requests, Took: g.Took - before.Took}
}

// GroupCommits scrapes the server's group-commit metrics.
func (p *Process) GroupCommits(ctx context.Context) (GroupCommits, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.URL+"/metrics", nil)
	if err != nil {
		return GroupCommits{}, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return GroupCommits{}, err
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		return GroupCommits{}, err
	}
	var g GroupCommits
	fetchKind := func(m *dto.Metric) bool {
		for _, l := range m.GetLabel() {
			if l.GetName() == "kind" && l.GetValue() == string(broker.GroupCommitFetch) {
				return true
			}
		}
		return false
	}
	if f := families["keybroker_group_commit_size"]; f != nil {
		for _, m := range f.GetMetric() {
			if fetchKind(m) {
				g.Commits += m.GetHistogram().GetSampleCount()
				g.Requests += m.GetHistogram().GetSampleSum()
			}
		}
	}
	if f := families["keybroker_group_commit_duration_seconds"]; f != nil {
		for _, m := range f.GetMetric() {
			if fetchKind(m) {
				g.Took += time.Duration(m.GetHistogram().GetSampleSum() * float64(time.Second))
			}
		}
	}
	return g, nil
}
