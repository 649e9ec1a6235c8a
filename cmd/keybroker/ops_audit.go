package main

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/keybroker/keybroker/broker"
)

// auditCollector exports this process's audit upkeep runs
// (broker.AuditKeeper): an alert on the time since the last success
// catches a replica set that stopped creating partitions days before
// the audit rows have nowhere to go.
type auditCollector struct{ rt *broker.Runtime }

var (
	auditRunsDesc = prometheus.NewDesc("keybroker_audit_upkeep_runs_total",
		"Audit upkeep runs of this process by result: ok, failed, or busy (another replica held the lock).", []string{"result"}, nil)
	auditLastSuccessDesc = prometheus.NewDesc("keybroker_audit_upkeep_last_success_timestamp_seconds",
		"When this process's audit upkeep last succeeded; absent before the first success.", nil, nil)
	auditPartitionsDesc = prometheus.NewDesc("keybroker_audit_partitions_total",
		"Audit partitions this process created or dropped (PostgreSQL).", []string{"op"}, nil)
	auditRowsRemovedDesc = prometheus.NewDesc("keybroker_audit_rows_removed_total",
		"Audit rows this process removed past the retention (dropped partitions count by their estimate).", nil, nil)
)

func (c auditCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{auditRunsDesc, auditLastSuccessDesc, auditPartitionsDesc, auditRowsRemovedDesc} {
		ch <- d
	}
}

func (c auditCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.rt.AuditUpkeepStats()
	ok := st.Runs - st.Failures - st.Busy
	ch <- prometheus.MustNewConstMetric(auditRunsDesc, prometheus.CounterValue, float64(ok), "ok")
	ch <- prometheus.MustNewConstMetric(auditRunsDesc, prometheus.CounterValue, float64(st.Failures), "failed")
	ch <- prometheus.MustNewConstMetric(auditRunsDesc, prometheus.CounterValue, float64(st.Busy), "busy")
	if !st.LastSuccess.IsZero() {
		ch <- prometheus.MustNewConstMetric(auditLastSuccessDesc, prometheus.GaugeValue, float64(st.LastSuccess.UnixNano())/1e9)
	}
	ch <- prometheus.MustNewConstMetric(auditPartitionsDesc, prometheus.CounterValue, float64(st.Created), "created")
	ch <- prometheus.MustNewConstMetric(auditPartitionsDesc, prometheus.CounterValue, float64(st.Dropped), "dropped")
	ch <- prometheus.MustNewConstMetric(auditRowsRemovedDesc, prometheus.CounterValue, float64(st.Deleted))
}
