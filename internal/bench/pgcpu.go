package bench

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// PostgresCPU returns the CPU time (user + system) that the processes
// named "postgres" on this machine have used so far: every backend, the
// WAL writer and the checkpointer, and, through the postmaster's
// children's times, the backends that have exited and been reaped. The
// difference over a step is what PostgreSQL spent on it (and on whatever
// else the machine asked of it meanwhile: read it as an upper bound). It
// returns 0 where /proc is not Linux's.
func PostgresCPU() time.Duration {
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	var ticks int64
	for _, name := range stats {
		stat, err := os.ReadFile(name)
		if err != nil {
			continue // exited since the glob
		}
		open, end := bytes.IndexByte(stat, '('), bytes.LastIndexByte(stat, ')')
		if open < 0 || end < open || string(stat[open+1:end]) != "postgres" {
			continue
		}
		// After the name: field 3 (state) first; utime, stime, cutime and
		// cstime are fields 14 to 17.
		fields := bytes.Fields(stat[end+1:])
		if len(fields) < 15 {
			continue
		}
		for _, f := range fields[11:15] {
			n, err := strconv.ParseInt(string(f), 10, 64)
			if err == nil {
				ticks += n
			}
		}
	}
	const tick = 10 * time.Millisecond // USER_HZ is 100 on Linux
	return time.Duration(ticks) * tick
}
