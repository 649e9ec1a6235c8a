package main

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keybroker/keybroker/broker"
)

// rowsCollector exports the rows per KEK id (the rotation runbook's "zero
// rows on the old id") and the re-wrap job's progress, from the runtime's
// last count (broker.RuntimeConfig.CountRowsEvery).
type rowsCollector struct{ rt *broker.Runtime }

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

func (c rowsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{rowsDesc, rowsAgeDesc, rewrapRunningDesc, rewrapRowsDesc, rewrapRateDesc, rewrapFinishedDesc} {
		ch <- d
	}
}

func (c rowsCollector) Collect(ch chan<- prometheus.Metric) {
	counts := c.rt.RowCounts()
	if counts.At.IsZero() {
		return
	}
	for _, r := range counts.Rows {
		mode := "server"
		if !r.Wrapped {
			mode = "zero_knowledge"
		}
		ch <- prometheus.MustNewConstMetric(rowsDesc, prometheus.GaugeValue, float64(r.Rows), r.KEKID, strconv.Itoa(r.FormatVersion), mode)
	}
	ch <- prometheus.MustNewConstMetric(rowsAgeDesc, prometheus.GaugeValue, float64(counts.At.Unix()))
	if st := counts.Rewrap; st != nil {
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
