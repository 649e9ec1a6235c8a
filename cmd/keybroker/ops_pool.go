package main

import (
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
)

// poolStatter is a store with a PostgreSQL connection pool.
type poolStatter interface {
	PoolStat() *pgxpool.Stat
}

// poolCollector exports the pool's statistics at scrape time: a pool
// that is always exhausted (acquires waiting) is the first sign that
// commit latency, not keybroker, is the limit.
type poolCollector struct{ s poolStatter }

var (
	poolConns = prometheus.NewDesc("keybroker_store_pool_connections",
		"Connections of the store's pool, by state (idle, acquired, constructing).", []string{"state"}, nil)
	poolMax = prometheus.NewDesc("keybroker_store_pool_max_connections",
		"Maximum size of the store's pool.", nil, nil)
	poolAcquires = prometheus.NewDesc("keybroker_store_pool_acquires_total",
		"Connections acquired from the pool.", nil, nil)
	poolEmptyAcquires = prometheus.NewDesc("keybroker_store_pool_empty_acquires_total",
		"Acquires that had to wait because no connection was idle.", nil, nil)
	poolCanceledAcquires = prometheus.NewDesc("keybroker_store_pool_canceled_acquires_total",
		"Acquires given up because their context ended.", nil, nil)
	poolAcquireWait = prometheus.NewDesc("keybroker_store_pool_acquire_wait_seconds_total",
		"Total time spent waiting for a connection.", nil, nil)
)

func (c poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{poolConns, poolMax, poolAcquires, poolEmptyAcquires, poolCanceledAcquires, poolAcquireWait} {
		ch <- d
	}
}

func (c poolCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.s.PoolStat()
	ch <- prometheus.MustNewConstMetric(poolConns, prometheus.GaugeValue, float64(st.IdleConns()), "idle")
	ch <- prometheus.MustNewConstMetric(poolConns, prometheus.GaugeValue, float64(st.AcquiredConns()), "acquired")
	ch <- prometheus.MustNewConstMetric(poolConns, prometheus.GaugeValue, float64(st.ConstructingConns()), "constructing")
	ch <- prometheus.MustNewConstMetric(poolMax, prometheus.GaugeValue, float64(st.MaxConns()))
	ch <- prometheus.MustNewConstMetric(poolAcquires, prometheus.CounterValue, float64(st.AcquireCount()))
	ch <- prometheus.MustNewConstMetric(poolEmptyAcquires, prometheus.CounterValue, float64(st.EmptyAcquireCount()))
	ch <- prometheus.MustNewConstMetric(poolCanceledAcquires, prometheus.CounterValue, float64(st.CanceledAcquireCount()))
	ch <- prometheus.MustNewConstMetric(poolAcquireWait, prometheus.CounterValue, st.AcquireDuration().Seconds())
}
