package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/cmd/keybroker/internal/config"
	"github.com/keybroker/keybroker/vaultapi"
	"github.com/keybroker/keybroker/vaultapi/jwtauth"
)

// The operations surface of serve: metrics, readiness, CORS, proxies,
// rate limit, the service key and TLS — configured here, wired by
// cmdServe.

// ops holds what serve's operations surface shares between its parts.
type ops struct {
	cfg       config.Ops
	log       *slog.Logger
	registry  *prometheus.Registry
	kek       *kekMetrics
	commits   *groupCommitMetrics
	readiness *vaultapi.Readiness
	metricsLn net.Listener // the separate metrics listener, if configured
}

// newOps creates the metrics registry with the process's own collectors
// and the KEK metrics, before the KEKs are opened so that they can be
// instrumented.
func newOps(cfg config.Ops, log *slog.Logger) (*ops, error) {
	reg := prometheus.NewRegistry()
	build := prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "keybroker_build_info", Help: "Always 1; the version label is the running build.",
		ConstLabels: prometheus.Labels{"version": version},
	})
	build.Set(1)
	if err := register(reg, collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), build); err != nil {
		return nil, err
	}
	km, err := newKEKMetrics(reg)
	if err != nil {
		return nil, err
	}
	gm, err := newGroupCommitMetrics(reg)
	if err != nil {
		return nil, err
	}
	return &ops{cfg: cfg, log: log, registry: reg, kek: km, commits: gm}, nil
}

// groupCommitMetrics are the fetch path's group commits: how many
// requests each carries, how long the store takes with it, and how often
// a request that failed a commit alone made it run the others again.
type groupCommitMetrics struct {
	size    *prometheus.HistogramVec
	latency *prometheus.HistogramVec
	retries *prometheus.CounterVec
}

func newGroupCommitMetrics(reg prometheus.Registerer) (*groupCommitMetrics, error) {
	m := &groupCommitMetrics{
		size: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "keybroker_group_commit_size",
			Help:    "Requests carried by one store call of a group commit of the fetch path, by kind (fetch: reads with their audit rows; audit: audit rows alone).",
			Buckets: prometheus.ExponentialBuckets(1, 2, 9), // 1 … 256, the most one commit carries
		}, []string{"kind"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "keybroker_group_commit_duration_seconds",
			Help:    "Time the store takes with one group commit of the fetch path (the round trip and the commit), by kind and outcome (ok, error).",
			Buckets: vaultapi.LatencyBuckets,
		}, []string{"kind", "outcome"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "keybroker_group_commit_retries_total",
			Help: "Store calls that re-ran part of a group commit after a request failed the previous call alone (splits), by kind. Each such request costs one retry of the others, never a call per request.",
		}, []string{"kind"}),
	}
	if err := register(reg, m.size, m.latency, m.retries); err != nil {
		return nil, err
	}
	for _, kind := range []broker.GroupCommitKind{broker.GroupCommitFetch, broker.GroupCommitAudit} {
		m.retries.WithLabelValues(string(kind)) // shown at 0 before the first split
	}
	return m, nil
}

// register registers every collector, stopping at the first error.
func register(reg prometheus.Registerer, cs ...prometheus.Collector) error {
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// observe records one group commit; it is broker.Config.OnGroupCommit.
func (m *groupCommitMetrics) observe(c broker.GroupCommit) {
	outcome := "ok"
	if c.Err != nil {
		outcome = "error"
	}
	m.size.WithLabelValues(string(c.Kind)).Observe(float64(c.Items))
	m.latency.WithLabelValues(string(c.Kind), outcome).Observe(c.Took.Seconds())
	if c.Retry {
		m.retries.WithLabelValues(string(c.Kind)).Inc()
	}
}

// apiConfig completes the API's configuration with the operations
// settings and the readiness checks: the runtime's, and the JWKS.
func (o *ops) apiConfig(base vaultapi.Config, store broker.Store, rt *broker.Runtime, verifier *jwtauth.Verifier) (vaultapi.Config, error) {
	cfg := base
	metrics, err := vaultapi.NewMetrics(o.registry)
	if err != nil {
		return cfg, err
	}
	cfg.Metrics = metrics
	cfg.Version = version
	if o.cfg.MetricsAddr == "" {
		cfg.MetricsHandler = o.metricsHandler()
	}
	cfg.CORSOrigins = o.cfg.CORSOrigins
	if len(o.cfg.TrustedProxies) > 0 {
		cfg.ClientIP = vaultapi.TrustedProxyClientIP(o.cfg.TrustedProxies)
	}
	cfg.RateLimit = vaultapi.RateLimit{PerSecond: o.cfg.RateLimit, Burst: o.cfg.RateBurst}
	cfg.ServiceKey = o.cfg.ServiceKey
	if cfg.ServiceKey != "" && len(cfg.ServiceKey) < 16 {
		o.log.Warn("the service key is shorter than 16 characters: anyone who guesses it can erase every vault; generate one with: keybroker kek generate")
	}

	var checks []vaultapi.Check
	for _, c := range rt.Checks() {
		check := vaultapi.Check{Name: c.Name, ID: c.ID, Probe: c.Probe}
		if c.DataKeys != nil {
			check.DataKeys = func() *vaultapi.DataKeys {
				row, ok := c.DataKeys()
				if !ok {
					return nil
				}
				return &vaultapi.DataKeys{Opens: row.Opened, Wraps: row.Wraps, Total: row.Total}
			}
		}
		checks = append(checks, check)
	}
	checks = append(checks, vaultapi.Check{Name: "jwks", Probe: jwksProbe(verifier)})
	if o.readiness, err = vaultapi.NewReadiness(vaultapi.ReadinessConfig{Checks: checks, Logger: o.log}); err != nil {
		return cfg, err
	}
	cfg.Readiness = o.readiness
	cfg.Rollout = rt.Rollout
	if err := o.registry.Register(readinessCollector{o.readiness}); err != nil {
		return cfg, err
	}
	if ps, ok := store.(poolStatter); ok {
		if err := o.registry.Register(poolCollector{ps}); err != nil {
			return cfg, err
		}
	}
	if err := o.registry.Register(rowsCollector{rt}); err != nil {
		return cfg, err
	}
	if err := o.registry.Register(rolloutCollector{rt}); err != nil {
		return cfg, err
	}
	if err := o.registry.Register(auditCollector{rt}); err != nil {
		return cfg, err
	}
	return cfg, nil
}

// jwksProbe reports the verifier's key set: pending until it first loads,
// then ok — a later failed refresh keeps the last good keys working, and
// is only logged.
func jwksProbe(v *jwtauth.Verifier) func(context.Context) error {
	return func(context.Context) error {
		ready, err := v.Status()
		switch {
		case ready:
			return nil
		case err != nil:
			return err
		default:
			return vaultapi.ErrPending
		}
	}
}

func (o *ops) metricsHandler() http.Handler {
	return promhttp.HandlerFor(o.registry, promhttp.HandlerOpts{
		ErrorLog: slog.NewLogLogger(o.log.Handler(), slog.LevelWarn),
	})
}

// listenMetrics binds the separate metrics address, if one is configured,
// before serve reports that it listens.
func (o *ops) listenMetrics() error {
	if o.cfg.MetricsAddr == "" {
		return nil
	}
	ln, err := net.Listen("tcp", o.cfg.MetricsAddr)
	if err != nil {
		return fmt.Errorf("metrics: listen %s: %w", o.cfg.MetricsAddr, err)
	}
	o.metricsLn = ln
	o.log.Info("metrics listening", slog.String("addr", ln.Addr().String()))
	return nil
}

// start polls readiness once, so that the first /readyz after serve
// listens already knows, then leaves the polling and the separate metrics
// listener running until ctx ends. The first poll takes at most one probe
// timeout, however the dependencies are doing.
func (o *ops) start(ctx context.Context) {
	o.readiness.Poll(ctx)
	go o.run(ctx)
}

// run polls readiness every ReadyInterval and serves the separate metrics
// listener, until ctx ends.
func (o *ops) run(ctx context.Context) {
	if o.metricsLn != nil {
		mux := http.NewServeMux()
		mux.Handle("GET /metrics", o.metricsHandler())
		srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, WriteTimeout: 30 * time.Second,
			ErrorLog: slog.NewLogLogger(o.log.Handler(), slog.LevelWarn)}
		go func() {
			if err := srv.Serve(o.metricsLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
				o.log.Error("metrics server stopped", slog.String("error", err.Error()))
			}
		}()
		defer srv.Close()
	}
	ticker := time.NewTicker(o.cfg.ReadyInterval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		o.readiness.Poll(ctx)
	}
}

// readinessCollector exports each readiness check as a gauge, so an alert
// can fire on a KEK that fails while the replica still serves.
type readinessCollector struct{ r *vaultapi.Readiness }

var readyDesc = prometheus.NewDesc("keybroker_ready_check",
	"1 when the readiness check's last poll was ok, else 0; status is the class (ok, pending, unreachable, failing).",
	[]string{"check", "id", "status"}, nil)

func (c readinessCollector) Describe(ch chan<- *prometheus.Desc) { ch <- readyDesc }

func (c readinessCollector) Collect(ch chan<- prometheus.Metric) {
	for _, res := range c.r.Results() {
		v := 0.0
		if res.Status == vaultapi.CheckOK {
			v = 1
		}
		ch <- prometheus.MustNewConstMetric(readyDesc, prometheus.GaugeValue, v, res.Name, res.ID, res.Status)
	}
}
