// Package bench is keybroker's load benchmark: `make bench` runs
// TestBenchTable, which starts the real keybroker binary as a subprocess
// on a fresh PostgreSQL database (and on local-kms, and on the embedded
// store), drives GET /key with the closed-loop load generator of this
// package, measures the pgbench floor of the same SQL in the same run, and
// writes the table to docs/benchmarks.md.
//
// Benchmarks report; nothing here asserts on a time. The test is skipped
// unless KEYBROKER_BENCH=1, so `make test` never depends on the speed of
// the machine it runs on.
package bench
