package main

import (
	"context"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keybroker/keybroker/broker"
)

// rowsInterval is how often the rows-per-KEK counts and the re-wrap
// state are re-read for /metrics. Counting groups the whole KEK index, so
// it runs on this clock, not on every scrape of every replica.
const rowsInterval = time.Minute

// rowsCollector exports the rows per KEK id (the rotation runbook's "zero
// rows on the old id") and the re-wrap job's progress, from a snapshot
// refreshed in the background.
type rowsCollector struct {
	counts broker.RewrapStore
	locker broker.RewrapLocker // nil when the store has no job lock (SQLite)
	log    *slog.Logger

	mu       sync.Mutex
	rows     []broker.KEKCount
	state    *broker.RewrapState
	loadedAt time.Time
}

var (
	rowsDesc = prometheus.NewDesc("keybroker_vault_rows",
		"Vault rows by KEK id, wrap format and mode (server: the server holds a wrap; zero_knowledge: only the recovery wrap).",
		[]string{"kek_id", "format", "mode"}, nil)
	rowsAgeDesc = prometheus.NewDesc("keybroker_vault_rows_refreshed_timestamp_seconds",
		"When keybroker_vault_rows was last read from the store.", nil, nil)
	rewrapRunningDesc = prometheus.NewDesc("keybroker_rewrap_running",
		"1 while a re-wrap runner holds the job's lock.", nil, nil)
	rewrapRowsDesc = prometheus.NewDesc("keybroker_rewrap_rows",
		"Rows of the current or last re-wrap run: total to move, done, skipped (changed by their user meanwhile) and failed.",
		[]string{"state", "active_kek_id"}, nil)
	rewrapRateDesc = prometheus.NewDesc("keybroker_rewrap_rows_per_second",
		"Average rate of the current or last re-wrap run.", []string{"active_kek_id"}, nil)
	rewrapFinishedDesc = prometheus.NewDesc("keybroker_rewrap_finished",
		"1 when the last re-wrap run finished its rows.", []string{"active_kek_id"}, nil)
)

// newRowsCollector returns the collector of store's rows.
func newRowsCollector(store broker.Store, log *slog.Logger) *rowsCollector {
	c := &rowsCollector{counts: store, log: log}
	c.locker, _ = store.(broker.RewrapLocker)
	return c
}

// refresh re-reads the counts and the job state; on error the previous
// snapshot stays and the error is logged.
func (c *rowsCollector) refresh(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	rows, err := c.counts.KEKCounts(ctx)
	if err != nil {
		if ctx.Err() == nil {
			c.log.Warn("metrics: counting rows per KEK failed", slog.String("error", err.Error()))
		}
		return
	}
	var state *broker.RewrapState
	if c.locker != nil {
		if state, err = c.locker.RewrapState(ctx); err != nil {
			c.log.Warn("metrics: reading the re-wrap state failed", slog.String("error", err.Error()))
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.rows, c.state, c.loadedAt = rows, state, time.Now()
}

// run refreshes every interval until ctx ends.
func (c *rowsCollector) run(ctx context.Context, interval time.Duration) {
	ticker := time.NewTicker(interval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		c.refresh(ctx)
	}
}

func (c *rowsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{rowsDesc, rowsAgeDesc, rewrapRunningDesc, rewrapRowsDesc, rewrapRateDesc, rewrapFinishedDesc} {
		ch <- d
	}
}

func (c *rowsCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.loadedAt.IsZero() {
		return
	}
	for _, r := range c.rows {
		mode := "server"
		if !r.Wrapped {
			mode = "zero_knowledge"
		}
		ch <- prometheus.MustNewConstMetric(rowsDesc, prometheus.GaugeValue, float64(r.Rows), r.KEKID, strconv.Itoa(r.FormatVersion), mode)
	}
	ch <- prometheus.MustNewConstMetric(rowsAgeDesc, prometheus.GaugeValue, float64(c.loadedAt.Unix()))
	if st := c.state; st != nil {
		running := 0.0
		if st.Running {
			running = 1
		}
		ch <- prometheus.MustNewConstMetric(rewrapRunningDesc, prometheus.GaugeValue, running)
		if st.Runner != "" {
			id := st.ActiveKEKID
			for state, n := range map[string]int64{"total": st.Total, "done": st.Done, "skipped": st.Skipped, "failed": st.Failed} {
				ch <- prometheus.MustNewConstMetric(rewrapRowsDesc, prometheus.GaugeValue, float64(n), state, id)
			}
			ch <- prometheus.MustNewConstMetric(rewrapRateDesc, prometheus.GaugeValue, st.RowsPerSecond, id)
			finished := 0.0
			if st.Finished {
				finished = 1
			}
			ch <- prometheus.MustNewConstMetric(rewrapFinishedDesc, prometheus.GaugeValue, finished, id)
		}
	}
}
