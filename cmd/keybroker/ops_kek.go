package main

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/keybroker/keybroker/kek"
	"github.com/keybroker/keybroker/vaultapi"
)

// kekMetrics count and time every call to a KEK provider: the calls that
// cost money and latency on a KMS. The keyring reports its calls
// (KeyringConfig.OnKEKCall), and the readiness probes and the start-up
// check theirs through Keyring.CallObserver.
type kekMetrics struct {
	ops     *prometheus.CounterVec
	latency *prometheus.HistogramVec
}

func newKEKMetrics(reg prometheus.Registerer) (*kekMetrics, error) {
	m := &kekMetrics{
		ops: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keybroker_kek_operations_total",
			Help: "Calls to KEK providers, by provider (URI scheme), KEK id, operation and outcome (ok, unavailable, denied, invalid_ciphertext, timeout, canceled, error).",
		}, []string{"provider", "kek_id", "operation", "outcome"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "keybroker_kek_operation_duration_seconds",
			Help:    "Latency of calls to KEK providers, by provider, KEK id and operation.",
			Buckets: vaultapi.LatencyBuckets,
		}, []string{"provider", "kek_id", "operation"}),
	}
	if err := register(reg, m.ops, m.latency); err != nil {
		return nil, err
	}
	return m, nil
}

// observe records one call to a KEK, labelled with its provider: the
// scheme of the KEK's URI, or data-key.
func (m *kekMetrics) observe(provider string, c kek.Call) {
	m.ops.WithLabelValues(provider, c.KEKID, c.Op, kek.Classify(c.Err).String()).Inc()
	m.latency.WithLabelValues(provider, c.KEKID, c.Op).Observe(c.Took.Seconds())
}

// dataKeyProvider labels the calls to a data key's local KEK (cached
// envelope mode).
const dataKeyProvider = "data-key"

// observeKEKCall is the keyring's OnKEKCall in serve: it labels a call
// with the scheme of the configured KEK's URI, and a call on any other id
// as one to a data key's local KEK — the only other KEKs a keyring holds.
func (o *openedKEKs) observeKEKCall(c kek.Call) {
	provider, configured := o.schemes[c.KEKID]
	if !configured {
		provider = dataKeyProvider
	}
	o.metrics.observe(provider, c)
}
