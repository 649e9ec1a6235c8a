package main

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/keybroker/keybroker/broker"
)

// rolloutCollector exports what this replica's rollout of a newly
// configured KEK waits for (broker.Runtime.Rollout): nothing when the
// replica announces nothing.
type rolloutCollector struct{ rt *broker.Runtime }

var (
	rolloutWaitingDesc = prometheus.NewDesc("keybroker_rollout_waiting",
		"1 while new wraps go under another KEK than the configured active one, because a live replica cannot open it (or fewer than the expected replicas announce it); the re-wrap job waits meanwhile.",
		[]string{"configured_kek_id", "writes_kek_id"}, nil)
	rolloutReplicasDesc = prometheus.NewDesc("keybroker_rollout_replicas",
		"Live replicas announcing their KEKs at the last heartbeat (this one included), and those that cannot open the configured active KEK.",
		[]string{"state"}, nil)
)

func (c rolloutCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- rolloutWaitingDesc
	ch <- rolloutReplicasDesc
}

func (c rolloutCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.rt.Rollout()
	if st == nil || st.CheckedAt == nil {
		return
	}
	waiting := 0.0
	if st.Waiting {
		waiting = 1
	}
	ch <- prometheus.MustNewConstMetric(rolloutWaitingDesc, prometheus.GaugeValue, waiting, st.Configured, st.Writes)
	ch <- prometheus.MustNewConstMetric(rolloutReplicasDesc, prometheus.GaugeValue, float64(st.Replicas), "live")
	ch <- prometheus.MustNewConstMetric(rolloutReplicasDesc, prometheus.GaugeValue, float64(st.Blocking), "blocking")
}
