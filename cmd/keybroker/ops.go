package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/term"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/kek"
	"github.com/keybroker/keybroker/vaultapi"
	"github.com/keybroker/keybroker/vaultapi/jwtauth"
)

// The operations surface of serve: metrics, readiness, CORS, proxies,
// rate limit, the service key and TLS — configured here, wired by
// cmdServe.

// opsConfig is the operations part of serve's configuration.
type opsConfig struct {
	MetricsAddr    string
	CORSOrigins    string
	TrustedProxies string
	RateLimit      float64
	RateBurst      int
	ServiceKey     string
	TLSCert        string
	TLSKey         string
	ReadyInterval  time.Duration
}

const (
	envMetricsAddr    = "KEYBROKER_METRICS_ADDR"
	envCORSOrigins    = "KEYBROKER_CORS_ORIGINS"
	envTrustedProxies = "KEYBROKER_TRUSTED_PROXIES"
	envRateLimit      = "KEYBROKER_RATE_LIMIT"
	envRateBurst      = "KEYBROKER_RATE_BURST"
	envServiceKey     = "KEYBROKER_SERVICE_KEY"
	envManaServiceKey = "MANA_SERVICE_KEY" // the original service's name for it
	envTLSCert        = "KEYBROKER_TLS_CERT"
	envTLSKey         = "KEYBROKER_TLS_KEY"
	envReadyInterval  = "KEYBROKER_READY_INTERVAL"
)

// Defaults of the operations settings. The rate limit is generous for a
// browser (a sign-in makes a handful of vault calls) and still caps what a
// stolen token can make the KMS do.
const (
	defaultRateLimit     = 10
	defaultRateBurst     = 50
	defaultReadyInterval = 10 * time.Second
)

// register adds the operations flags to fs, each defaulting to its
// environment variable.
func (o *opsConfig) register(fs *flag.FlagSet, getenv func(string) string) error {
	env := func(k, def string) string {
		if v := getenv(k); v != "" {
			return v
		}
		return def
	}
	rate, err := strconv.ParseFloat(env(envRateLimit, strconv.Itoa(defaultRateLimit)), 64)
	if err != nil {
		return fmt.Errorf("$%s: want requests per second, e.g. 10 or 0.5 (0 disables): %w", envRateLimit, err)
	}
	burst, err := strconv.Atoi(env(envRateBurst, strconv.Itoa(defaultRateBurst)))
	if err != nil {
		return fmt.Errorf("$%s: want a whole number of requests: %w", envRateBurst, err)
	}
	interval, err := time.ParseDuration(env(envReadyInterval, defaultReadyInterval.String()))
	if err != nil {
		return fmt.Errorf("$%s: %w", envReadyInterval, err)
	}
	fs.StringVar(&o.MetricsAddr, "metrics-addr", env(envMetricsAddr, ""), "serve /metrics on this address only (e.g. 127.0.0.1:9090) instead of on --addr ($"+envMetricsAddr+")")
	fs.StringVar(&o.CORSOrigins, "cors-origins", env(envCORSOrigins, ""), "browser origins allowed to call the vault routes, e.g. https://app.example.com, separated by spaces or commas ($"+envCORSOrigins+")")
	fs.StringVar(&o.TrustedProxies, "trusted-proxies", env(envTrustedProxies, ""), "CIDRs of reverse proxies whose X-Forwarded-For is believed, separated by spaces or commas ($"+envTrustedProxies+")")
	fs.Float64Var(&o.RateLimit, "rate-limit", rate, "vault requests per second per user; 0 disables ($"+envRateLimit+")")
	fs.IntVar(&o.RateBurst, "rate-burst", burst, "vault requests a user may make at once ($"+envRateBurst+")")
	fs.StringVar(&o.ServiceKey, "service-key", env(envServiceKey, env(envManaServiceKey, "")), "key the auth service sends as X-Service-Key; enables the service routes. Prefer the variable: flags show in ps ($"+envServiceKey+" or $"+envManaServiceKey+")")
	fs.StringVar(&o.TLSCert, "tls-cert", env(envTLSCert, ""), "PEM certificate chain; with --tls-key serves HTTPS, reloaded on SIGHUP ($"+envTLSCert+")")
	fs.StringVar(&o.TLSKey, "tls-key", env(envTLSKey, ""), "PEM private key of --tls-cert ($"+envTLSKey+")")
	fs.DurationVar(&o.ReadyInterval, "ready-interval", interval, "how often /readyz's checks poll the store, the KEKs and the JWKS ($"+envReadyInterval+")")
	return nil
}

// validate checks what can be checked without opening anything.
func (o *opsConfig) validate() error {
	if (o.TLSCert == "") != (o.TLSKey == "") {
		return fmt.Errorf("TLS needs both $%s and $%s (or --tls-cert and --tls-key)", envTLSCert, envTLSKey)
	}
	if o.RateLimit < 0 {
		return fmt.Errorf("$%s must not be negative (0 disables the rate limit)", envRateLimit)
	}
	if o.RateLimit > 0 && o.RateBurst < 1 {
		return fmt.Errorf("$%s must be at least 1", envRateBurst)
	}
	if o.ReadyInterval < 100*time.Millisecond {
		return fmt.Errorf("$%s must be at least 100ms", envReadyInterval)
	}
	if _, err := vaultapi.ParseTrustedProxies(splitList(o.TrustedProxies)); err != nil {
		return err
	}
	return nil
}

// splitList splits a list given in one variable by spaces or commas.
func splitList(s string) []string {
	return strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' || r == '\n' || r == '\t' })
}

// ops holds what serve's operations surface shares between its parts.
type ops struct {
	cfg       opsConfig
	log       *slog.Logger
	registry  *prometheus.Registry
	kek       *kekMetrics
	commits   *groupCommitMetrics
	readiness *vaultapi.Readiness
	rows      *rowsCollector // nil until apiConfig
	metricsLn net.Listener   // the separate metrics listener, if configured
}

// newOps creates the metrics registry with the process's own collectors
// and the KEK metrics, before the KEKs are opened so that they can be
// instrumented.
func newOps(cfg opsConfig, log *slog.Logger) (*ops, error) {
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
// settings and builds the readiness checks over the store, the KEKs, the
// keyring and the JWKS. keks is nil in dev mode, where the keyring's own
// KEKs are checked.
func (o *ops) apiConfig(base vaultapi.Config, store readyStore, keyring *broker.Keyring, keks *openedKEKs, verifier *jwtauth.Verifier) (vaultapi.Config, error) {
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
	cfg.CORSOrigins = splitList(o.cfg.CORSOrigins)
	if o.cfg.TrustedProxies != "" {
		trusted, err := vaultapi.ParseTrustedProxies(splitList(o.cfg.TrustedProxies))
		if err != nil {
			return cfg, err
		}
		cfg.ClientIP = vaultapi.TrustedProxyClientIP(trusted)
	}
	cfg.RateLimit = vaultapi.RateLimit{PerSecond: o.cfg.RateLimit, Burst: o.cfg.RateBurst}
	cfg.ServiceKey = o.cfg.ServiceKey
	if cfg.ServiceKey != "" && len(cfg.ServiceKey) < 16 {
		o.log.Warn("the service key is shorter than 16 characters: anyone who guesses it can erase every vault; generate one with: keybroker kek generate")
	}

	checks := []vaultapi.Check{{Name: "store", Probe: store.Ping}}
	cached := map[string]bool{}
	if keks != nil {
		for _, id := range keks.cached {
			cached[id] = true
		}
	}
	for _, k := range o.checkedKEKs(keyring, keks) {
		if sc, ok := k.(kek.StatusChecker); ok {
			probe := observedStatus(sc, k.ID(), keyring.CallObserver(k))
			if cached[k.ID()] {
				probe = cachedKEKProbe(throttleProbe(probe, cachedKEKStatusEvery, time.Now), keyring)
			}
			checks = append(checks, vaultapi.Check{Name: "kek", ID: k.ID(), Probe: probe})
		}
	}
	checks = append(checks,
		vaultapi.Check{Name: "keyring", Probe: func(context.Context) error { return keyring.Ready() }},
		vaultapi.Check{Name: "jwks", Probe: jwksProbe(verifier)},
	)
	if o.readiness, err = vaultapi.NewReadiness(vaultapi.ReadinessConfig{Checks: checks, Logger: o.log}); err != nil {
		return cfg, err
	}
	cfg.Readiness = o.readiness
	if err := o.registry.Register(readinessCollector{o.readiness}); err != nil {
		return cfg, err
	}
	if ps, ok := store.(poolStatter); ok {
		if err := o.registry.Register(poolCollector{ps}); err != nil {
			return cfg, err
		}
	}
	o.rows = newRowsCollector(store, o.log)
	if err := o.registry.Register(o.rows); err != nil {
		return cfg, err
	}
	return cfg, nil
}

// observedStatus is sc.Status, each call reported to onCall (the KEK
// metrics) when it is not nil.
func observedStatus(sc kek.StatusChecker, id string, onCall func(kek.Call)) func(context.Context) error {
	if onCall == nil {
		return sc.Status
	}
	return func(ctx context.Context) error {
		start := time.Now()
		err := sc.Status(ctx)
		onCall(kek.Call{KEKID: id, Op: kek.OpStatus, Took: time.Since(start), Err: err})
		return err
	}
}

// cachedKEKStatusEvery spaces the status calls of a cached remote KEK. In
// cached mode no fetch calls the KMS; polling its metadata at the
// readiness interval would be the only KMS traffic of a busy server (and
// a cost on a metered KMS), while a refusal is still seen within a minute.
const cachedKEKStatusEvery = time.Minute

// throttleProbe calls probe at most once per every and answers with the
// last result in between.
func throttleProbe(probe func(context.Context) error, every time.Duration, now func() time.Time) func(context.Context) error {
	var mu sync.Mutex
	var last time.Time
	var lastErr error
	return func(ctx context.Context) error {
		mu.Lock()
		defer mu.Unlock()
		if !last.IsZero() && now().Sub(last) < every {
			return lastErr
		}
		lastErr = probe(ctx)
		last = now()
		return lastErr
	}
}

// cachedKEKProbe is the readiness probe of a remote KEK in cached
// envelope mode. With its data keys loaded a replica serves fetches and
// new vaults without the KMS, so a KMS it cannot reach does not make it
// unready: every replica shares that KMS, and taking them all out of the
// load balancer would turn a KMS outage into a login outage. Until the
// data keys load (the keyring check), and when the KMS answers and refuses
// (a disabled or revoked key: an operator must act), the check fails as
// for any KEK. The outage still shows in the KEK call metrics.
func cachedKEKProbe(status func(context.Context) error, keyring *broker.Keyring) func(context.Context) error {
	return func(ctx context.Context) error {
		err := status(ctx)
		if kek.Classify(err).Outage() && keyring.Ready() == nil {
			return nil
		}
		return err
	}
}

// checkedKEKs are the KEKs readiness probes: the configured ones (remote
// KEKs in cached mode included, through cachedKEKProbe), or in dev mode
// the keyring's.
func (o *ops) checkedKEKs(keyring *broker.Keyring, keks *openedKEKs) []broker.KEK {
	if keks != nil {
		return append([]broker.KEK{keks.active}, keks.retired...)
	}
	var out []broker.KEK
	for _, id := range keyring.IDs() {
		if kek, err := keyring.Lookup(id); err == nil {
			out = append(out, kek)
		}
	}
	return out
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
	if o.rows != nil {
		o.rows.refresh(ctx)
		go o.rows.run(ctx, rowsInterval)
	}
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

// isTerminal reports whether w is a terminal, where logs are read by a
// person rather than parsed.
func isTerminal(w io.Writer) bool {
	f, ok := w.(interface{ Fd() uintptr })
	return ok && term.IsTerminal(int(f.Fd()))
}
