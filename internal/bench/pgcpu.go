package bench

import (
	"os"
	"path/filepath"
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
	var total time.Duration
	for _, name := range stats {
		stat, err := os.ReadFile(name)
		if err != nil {
			continue // exited since the glob
		}
		if comm, cpu, err := statCPU(stat, true); err == nil && comm == "postgres" {
			total += cpu
		}
	}
	return total
}
