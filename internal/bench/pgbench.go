package bench

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// UserID is the id of the i-th benchmark user (1-based), the same in the
// server's requests and in the pgbench script.
func UserID(i int) string { return "bench-user-" + strconv.Itoa(i) }

// FloorScript is the pgbench script of the floor: the SQL one GET /key
// runs — the user scope, the vault row read and the audit insert — in one
// transaction, one durable commit per fetch, as the original service did
// it. The columns and values are those the server sends.
func FloorScript(schema string, users int) string {
	vaults := pgx.Identifier{schema, "encryption_vaults"}.Sanitize()
	audit := pgx.Identifier{schema, "encryption_vault_audit"}.Sanitize()
	return fmt.Sprintf(`\set uid random(1, %d)
BEGIN;
SELECT set_config('app.current_user_id', 'bench-user-' || :uid, true);
SELECT user_id, wrapped_mk, wrap_iv, format_version, kek_id, key_check, created_at, rotated_at, recovery_wrapped_mk, recovery_iv, recovery_format_version, recovery_set_at, zero_knowledge FROM %s WHERE user_id = 'bench-user-' || :uid;
INSERT INTO %s (id, user_id, action, ip_address, user_agent, context, status, created_at) VALUES (substr(md5(random()::text), 1, 21), 'bench-user-' || :uid, 'fetch', '127.0.0.1', 'Go-http-client/1.1', NULL, 200, now());
COMMIT;
`, users, vaults, audit)
}

// Pgbench runs pgbench with script for duration at clients connections
// (2 threads, prepared statements) against databaseURL, logging every
// transaction so that latency percentiles come from the same data as the
// generator's. A positive rate paces it to that many transactions a
// second (--rate: open loop, Poisson arrivals), and each latency then
// counts from when the transaction was scheduled, as the paced
// generator's count from when a request was due.
func Pgbench(ctx context.Context, databaseURL, script string, clients int, rate float64, duration time.Duration, dir string) (*Result, error) {
	scriptPath := filepath.Join(dir, "floor.sql")
	if err := os.WriteFile(scriptPath, []byte(script), 0o600); err != nil {
		return nil, err
	}
	logDir, err := os.MkdirTemp(dir, "pgbench-log-")
	if err != nil {
		return nil, err
	}
	secs := max(1, int(duration.Round(time.Second)/time.Second))
	args := []string{
		"--no-vacuum", "--protocol=prepared",
		"--client=" + strconv.Itoa(clients), "--jobs=" + strconv.Itoa(min(2, clients)),
		"--time=" + strconv.Itoa(secs),
		"--file=" + scriptPath,
		"--log", "--log-prefix=" + filepath.Join(logDir, "tx"),
	}
	if rate > 0 {
		args = append(args, "--rate="+strconv.FormatFloat(rate, 'f', 0, 64))
	}
	args = append(args, databaseURL)
	cmd := exec.CommandContext(ctx, "pgbench", args...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("bench: pgbench: %w\n%s", err, out)
	}
	res := &Result{Elapsed: time.Duration(secs) * time.Second}
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		res.GeneratorCPU = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	failed := regexp.MustCompile(`number of failed transactions: (\d+)`).FindSubmatch(out)
	if failed != nil {
		res.Errors, _ = strconv.Atoi(string(failed[1]))
	}
	logs, err := filepath.Glob(filepath.Join(logDir, "tx*"))
	if err != nil {
		return nil, err
	}
	for _, name := range logs {
		if err := readPgbenchLog(name, res); err != nil {
			return nil, err
		}
	}
	// Report pgbench's own tps, which leaves out connection set-up (the
	// server's connections are warm too): the window becomes the time
	// those transactions took at that rate.
	if tps := regexp.MustCompile(`tps = ([0-9.]+) \(without initial connection time\)`).FindSubmatch(out); tps != nil {
		if v, err := strconv.ParseFloat(string(tps[1]), 64); err == nil && v > 0 {
			res.Elapsed = time.Duration(float64(res.OK) / v * float64(time.Second))
		}
	}
	slices.Sort(res.Latencies)
	return res, nil
}

// readPgbenchLog reads a per-transaction log: "client_id transaction_no
// time script_no time_epoch time_us [schedule_lag]", time being the
// latency in µs (from the scheduled start under --rate, lag included).
func readPgbenchLog(name string, res *Result) error {
	f, err := os.Open(name)
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 3 {
			continue
		}
		us, err := strconv.ParseInt(fields[2], 10, 64)
		if err != nil {
			res.Errors++ // "failed" or "skipped" in place of a latency
			continue
		}
		res.OK++
		res.Latencies = append(res.Latencies, time.Duration(us)*time.Microsecond)
	}
	return sc.Err()
}

// PgbenchVersion returns `pgbench --version`, e.g. "pgbench (PostgreSQL) 15.20".
func PgbenchVersion() string {
	out, err := exec.Command("pgbench", "--version").Output()
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(out))
}
