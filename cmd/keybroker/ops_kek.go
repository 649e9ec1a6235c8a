package main

import (
	"context"
	"errors"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/kekproviders"
	"github.com/keybroker/keybroker/kekproviders/kekerr"
	"github.com/keybroker/keybroker/vaultapi"
)

// kekMetrics count and time every call to a KEK provider: the calls that
// cost money and latency on a KMS.
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

// kekOutcome names an error's class for the outcome label.
func kekOutcome(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, context.Canceled):
		return "canceled"
	case kekerr.IsUnavailable(err):
		return "unavailable"
	case kekerr.IsDenied(err):
		return "denied"
	case errors.Is(err, kekerr.ErrInvalidCiphertext):
		return "invalid_ciphertext"
	default:
		return "error"
	}
}

// The optional KEK abilities the decorator passes through. They are
// spelled out structurally so that the decorator keeps every ability the
// re-wrap job and readiness look for by type assertion.
type (
	kekRewrapper interface {
		Rewrap(ctx context.Context, ciphertext []byte, binding map[string]string) ([]byte, error)
	}
	kekVersioner interface {
		KeyVersion(ciphertext []byte) (int, error)
		LatestVersion(ctx context.Context) (int, error)
	}
)

// instrumentedKEK times and counts a KEK's calls. It always has Status
// (every provider of this module has one; a KEK without it reports ok)
// so readiness can probe it.
type instrumentedKEK struct {
	inner    broker.KEK
	provider string
	m        *kekMetrics
}

// instrumentKEK wraps kek so that its calls are measured. The result has
// Rewrap, and KeyVersion with LatestVersion, exactly when kek has them.
func instrumentKEK(kek broker.KEK, provider string, m *kekMetrics) broker.KEK {
	base := &instrumentedKEK{inner: kek, provider: provider, m: m}
	_, rewraps := kek.(kekRewrapper)
	_, versions := kek.(kekVersioner)
	switch {
	case rewraps && versions:
		return &instrumentedVersionedRewrapKEK{base}
	case rewraps:
		return &instrumentedRewrapKEK{base}
	case versions:
		return &instrumentedVersionedKEK{base}
	default:
		return base
	}
}

func (k *instrumentedKEK) observe(op string, start time.Time, err error) {
	id := k.inner.ID()
	k.m.ops.WithLabelValues(k.provider, id, op, kekOutcome(err)).Inc()
	k.m.latency.WithLabelValues(k.provider, id, op).Observe(time.Since(start).Seconds())
}

// ID returns the inner KEK's id.
func (k *instrumentedKEK) ID() string { return k.inner.ID() }

// Wrap calls the inner KEK's Wrap and measures it.
func (k *instrumentedKEK) Wrap(ctx context.Context, plaintext []byte, binding map[string]string) ([]byte, error) {
	start := time.Now()
	out, err := k.inner.Wrap(ctx, plaintext, binding)
	k.observe("wrap", start, err)
	return out, err
}

// Unwrap calls the inner KEK's Unwrap and measures it.
func (k *instrumentedKEK) Unwrap(ctx context.Context, ciphertext []byte, binding map[string]string) ([]byte, error) {
	start := time.Now()
	out, err := k.inner.Unwrap(ctx, ciphertext, binding)
	k.observe("unwrap", start, err)
	return out, err
}

// Local passes the inner KEK's broker.LocalKEK ability through: false
// unless the inner KEK unwraps without a network call.
func (k *instrumentedKEK) Local() bool {
	l, ok := k.inner.(broker.LocalKEK)
	return ok && l.Local()
}

// Destroy passes the inner KEK's broker.KEKDestroyer ability through: the
// keyring zeroes a data key it no longer needs through it.
func (k *instrumentedKEK) Destroy() bool {
	d, ok := k.inner.(broker.KEKDestroyer)
	return ok && d.Destroy()
}

// Status calls the inner KEK's Status, if it has one, and measures it.
func (k *instrumentedKEK) Status(ctx context.Context) error {
	sc, ok := k.inner.(kekproviders.StatusChecker)
	if !ok {
		return nil
	}
	start := time.Now()
	err := sc.Status(ctx)
	k.observe("status", start, err)
	return err
}

func (k *instrumentedKEK) rewrap(ctx context.Context, ciphertext []byte, binding map[string]string) ([]byte, error) {
	start := time.Now()
	out, err := k.inner.(kekRewrapper).Rewrap(ctx, ciphertext, binding)
	k.observe("rewrap", start, err)
	return out, err
}

func (k *instrumentedKEK) latestVersion(ctx context.Context) (int, error) {
	start := time.Now()
	v, err := k.inner.(kekVersioner).LatestVersion(ctx)
	k.observe("latest_version", start, err)
	return v, err
}

type instrumentedRewrapKEK struct{ *instrumentedKEK }

// Rewrap calls the inner KEK's Rewrap and measures it.
func (k *instrumentedRewrapKEK) Rewrap(ctx context.Context, ciphertext []byte, binding map[string]string) ([]byte, error) {
	return k.rewrap(ctx, ciphertext, binding)
}

type instrumentedVersionedKEK struct{ *instrumentedKEK }

// KeyVersion parses the ciphertext locally; it is not measured.
func (k *instrumentedVersionedKEK) KeyVersion(ciphertext []byte) (int, error) {
	return k.inner.(kekVersioner).KeyVersion(ciphertext)
}

// LatestVersion asks the backend and is measured.
func (k *instrumentedVersionedKEK) LatestVersion(ctx context.Context) (int, error) {
	return k.latestVersion(ctx)
}

type instrumentedVersionedRewrapKEK struct{ *instrumentedKEK }

// Rewrap calls the inner KEK's Rewrap and measures it.
func (k *instrumentedVersionedRewrapKEK) Rewrap(ctx context.Context, ciphertext []byte, binding map[string]string) ([]byte, error) {
	return k.rewrap(ctx, ciphertext, binding)
}

// KeyVersion parses the ciphertext locally; it is not measured.
func (k *instrumentedVersionedRewrapKEK) KeyVersion(ciphertext []byte) (int, error) {
	return k.inner.(kekVersioner).KeyVersion(ciphertext)
}

// LatestVersion asks the backend and is measured.
func (k *instrumentedVersionedRewrapKEK) LatestVersion(ctx context.Context) (int, error) {
	return k.latestVersion(ctx)
}

var (
	_ kekproviders.StatusChecker = (*instrumentedKEK)(nil)
	_ broker.KEKDestroyer        = (*instrumentedKEK)(nil)
	_ kekRewrapper               = (*instrumentedRewrapKEK)(nil)
	_ kekVersioner               = (*instrumentedVersionedKEK)(nil)
	_ kekRewrapper               = (*instrumentedVersionedRewrapKEK)(nil)
	_ kekVersioner               = (*instrumentedVersionedRewrapKEK)(nil)
)

// instrument wraps the opened KEKs in place, labelled with their URI's
// scheme. The originals stay in o.all, which close uses.
func (o *openedKEKs) instrument(m *kekMetrics, cfg *config, getenv func(string) string) error {
	activeURI, retiredURIs, err := cfg.kekURIs(getenv)
	if err != nil {
		return err
	}
	if len(retiredURIs) != len(o.retired) {
		return errors.New("instrument: the opened KEKs do not match the configured URIs")
	}
	scheme := func(uri string) string {
		if p, err := kekproviders.ParseURI(uri); err == nil {
			return p.Scheme
		}
		return "unknown"
	}
	o.metrics = m
	o.active = instrumentKEK(o.active, scheme(activeURI), m)
	for i, kek := range o.retired {
		o.retired[i] = instrumentKEK(kek, scheme(retiredURIs[i]), m)
	}
	return nil
}
