package bench

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// Row is one line of the table: one configuration at one concurrency.
type Row struct {
	Config      string // e.g. "PostgreSQL + env KEK"
	Concurrency int
	// Rate is the pace of an open-loop step; zero for closed loop.
	Rate   float64
	Result *Result
	// PeakRSS of the server during the step, in bytes; zero when not
	// measured (pgbench).
	PeakRSS int64
	// KMSCalls is the key operations (Encrypt, Decrypt, GenerateDataKey…)
	// sent to the KMS in the measured window; negative when there is no
	// KMS.
	KMSCalls int64
	// KMSProbes is the DescribeKey calls of the status probe in the
	// window, on a timer whatever the load, so not counted in KMSCalls.
	KMSProbes int64
	// ServerLatencies are the server's own times for the requests of the
	// window (its access log's latency), sorted; nil when not measured.
	ServerLatencies []time.Duration
	// GroupCommits are the server's group commits of fetches in the
	// window; zero when it has none (SQLite, cache=off rows are audit
	// commits).
	GroupCommits GroupCommits
	// CPU is the server's CPU time (user + system) in the measured
	// window; zero when not measured.
	CPU time.Duration
	// DBCPU is PostgreSQL's CPU time in the measured window (all its
	// processes: PostgresCPU); zero when not measured.
	DBCPU time.Duration
	// FloorRPS is the pgbench floor at the same concurrency; zero when
	// none was measured.
	FloorRPS float64
	// Generator names what drove the step: GeneratorWrk, GeneratorGo or
	// GeneratorPgbench; "" when not said.
	Generator string
	Note      string
}

// KMSPer10k is KMS key operations per 10 000 successful requests.
func (r *Row) KMSPer10k() float64 {
	if r.KMSCalls < 0 || r.Result.OK == 0 {
		return -1
	}
	return float64(r.KMSCalls) * 10000 / float64(r.Result.OK)
}

// FloorRatio is the row's throughput over the floor's.
func (r *Row) FloorRatio() float64 {
	if r.FloorRPS <= 0 {
		return 0
	}
	return r.Result.RPS() / r.FloorRPS
}

// Table renders rows as a Markdown table.
func Table(rows []*Row) string {
	var b strings.Builder
	b.WriteString("| configuration | conns | req/s | p50 | p99 | p99.9 | server p99 | peak RSS | server CPU / req | PostgreSQL CPU / req | generator | generator CPU / req | × floor | KMS calls / 10k req (calls; status probes) | errors |\n")
	b.WriteString("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|--:|--:|--:|--:|\n")
	for _, r := range rows {
		conns := strconv.Itoa(r.Concurrency)
		if r.Rate > 0 {
			conns += fmt.Sprintf(" @ %.0f/s", r.Rate)
		}
		rss := "—"
		if r.PeakRSS > 0 {
			rss = fmt.Sprintf("%.1f MiB", float64(r.PeakRSS)/(1<<20))
		}
		ratio := "—"
		if f := r.FloorRatio(); f > 0 {
			ratio = fmt.Sprintf("%.2f×", f)
		}
		kms := "—"
		if k := r.KMSPer10k(); k >= 0 {
			kms = fmt.Sprintf("%.1f (%d; %d)", k, r.KMSCalls, r.KMSProbes)
		}
		cpu, dbCPU, genCPU := cpuPerRequest(r.CPU, r.Result.OK), cpuPerRequest(r.DBCPU, r.Result.OK), cpuPerRequest(r.Result.GeneratorCPU, r.Result.OK)
		gen := "—"
		if r.Generator != "" {
			gen = r.Generator
		}
		server := "—"
		if len(r.ServerLatencies) > 0 {
			server = ms(percentile(r.ServerLatencies, 99))
		}
		config := r.Config
		if r.Note != "" {
			config += " (" + r.Note + ")"
		}
		fmt.Fprintf(&b, "| %s | %s | %.0f | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %d |\n",
			config, conns, r.Result.RPS(),
			ms(r.Result.Percentile(50)), ms(r.Result.Percentile(99)), ms(r.Result.Percentile(99.9)),
			server, rss, cpu, dbCPU, gen, genCPU, ratio, kms, r.Result.Errors)
	}
	return b.String()
}

// cpuPerRequest is a CPU time spread over ok requests, in µs: "—" when
// either is not measured.
func cpuPerRequest(cpu time.Duration, ok int) string {
	if cpu <= 0 || ok <= 0 {
		return "—"
	}
	return fmt.Sprintf("%.0f µs", usPer(cpu, ok))
}

// usPer is d per request of n, in µs (n of 0 counts as 1).
func usPer(d time.Duration, n int) float64 {
	return float64(d/time.Microsecond) / float64(max(n, 1))
}

func ms(d time.Duration) string {
	return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond))
}

// Machine describes where the benchmark ran.
type Machine struct {
	CPU, Kernel, Go, PostgreSQL, Pgbench string
	// LoadBefore and LoadAfter are /proc/loadavg around the run: other
	// work on the machine shows in the numbers, and here.
	LoadBefore, LoadAfter string
	// Reclaim describes the kernel's DAMON monitors, when any runs: a
	// proactive reclaimer that pages out memory it finds idle works on
	// the cores the benchmark shares.
	Reclaim     string
	Cores       int
	MemoryBytes int64
	Date        time.Time
}

// ThisMachine reads the CPU model, memory and kernel of the machine the
// benchmark runs on; PostgreSQL and pgbench come from the caller.
func ThisMachine() Machine {
	m := Machine{Cores: runtime.NumCPU(), Go: runtime.Version(), Date: time.Now().UTC(), CPU: "unknown", Kernel: "unknown"}
	if cpuinfo, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(cpuinfo), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if meminfo, err := os.ReadFile("/proc/meminfo"); err == nil {
		for line := range strings.SplitSeq(string(meminfo), "\n") {
			if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
				m.MemoryBytes = kb << 10
			}
		}
	}
	if release, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = "Linux " + strings.TrimSpace(string(release))
	}
	m.Reclaim = damon("/sys/kernel/mm/damon/admin/kdamonds")
	return m
}

// damon describes the DAMON monitors under root (the sysfs admin
// directory): each kdamond's state, its operations set and its schemes'
// actions, e.g. "kdamond 0 on (paddr, pageout)"; empty when there are
// none or they cannot be read.
func damon(root string) string {
	dirs, err := filepath.Glob(filepath.Join(root, "[0-9]*"))
	if err != nil {
		return ""
	}
	read := func(path string) string {
		raw, err := os.ReadFile(path)
		if err != nil {
			return ""
		}
		return strings.TrimSpace(string(raw))
	}
	var out []string
	for _, dir := range dirs {
		state := read(filepath.Join(dir, "state"))
		if state == "" {
			continue
		}
		what := []string{}
		if ops := read(filepath.Join(dir, "contexts", "0", "operations")); ops != "" {
			what = append(what, ops)
		}
		actions, _ := filepath.Glob(filepath.Join(dir, "contexts", "0", "schemes", "[0-9]*", "action"))
		for _, a := range actions {
			if v := read(a); v != "" {
				what = append(what, v)
			}
		}
		desc := "kdamond " + filepath.Base(dir) + " " + state
		if len(what) > 0 {
			desc += " (" + strings.Join(what, ", ") + ")"
		}
		out = append(out, desc)
	}
	return strings.Join(out, "; ")
}

// Markdown renders the machine as a list.
func (m Machine) Markdown() string {
	return fmt.Sprintf(`- date: %s
- CPU: %s, %d cores (runtime.NumCPU)
- memory: %.1f GiB
- kernel: %s
- Go: %s
- PostgreSQL: %s (%s)
- load average (1, 5, 15 min) before the run: %s; after: %s
%s`, m.Date.Format("2006-01-02 15:04 MST"), m.CPU, m.Cores, float64(m.MemoryBytes)/(1<<30), m.Kernel, m.Go, m.PostgreSQL, m.Pgbench,
		m.LoadBefore, m.LoadAfter, m.reclaimLine())
}

func (m Machine) reclaimLine() string {
	if m.Reclaim == "" {
		return ""
	}
	return "- kernel memory monitor (DAMON): " + m.Reclaim + "\n"
}

// LoadAverage returns the 1, 5 and 15 minute load averages.
func LoadAverage() string {
	raw, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	fields := strings.Fields(string(raw))
	if len(fields) < 3 {
		return "unknown"
	}
	return strings.Join(fields[:3], " ")
}

// ReplaceSection replaces the text between the markers
// "<!-- begin bench:NAME -->" and "<!-- end bench:NAME -->" in doc with
// content, keeping the hand-written text around it; missing markers are
// appended at the end.
func ReplaceSection(doc, name, content string) string {
	begin := "<!-- begin bench:" + name + " -->"
	end := "<!-- end bench:" + name + " -->"
	if !strings.HasSuffix(content, "\n") {
		content += "\n"
	}
	i := strings.Index(doc, begin)
	j := strings.Index(doc, end)
	if i < 0 || j < i {
		if doc != "" && !strings.HasSuffix(doc, "\n") {
			doc += "\n"
		}
		return doc + "\n" + begin + "\n" + content + end + "\n"
	}
	return doc[:i+len(begin)] + "\n" + content + doc[j:]
}
