package broker

import (
	"context"
	"sync"
	"time"

	"github.com/keybroker/keybroker/kek"
)

// What a server's readiness is made of: the store's ping and each KEK's status, bounded and throttled.

// Pinger is a store that can tell whether it answers; readiness checks
// it (Runtime.Checks).
type Pinger interface {
	Ping(ctx context.Context) error
}

// ReadinessCheck is one dependency a server needs to answer: its name,
// the id of the instance (a KEK id), and the probe that polls it.
type ReadinessCheck struct {
	Name  string
	ID    string
	Probe func(context.Context) error
	// DataKeys, for a KEK in cached envelope mode, reports what it does
	// for the data keys (Keyring.DataKeyKEK).
	DataKeys func() (KEKDataKeys, bool)
}

// Checks are the readiness rules: the store when it is a Pinger, the
// status of each configured KEK that has one, and the keyring's data
// keys. A KEK in cached envelope mode is asked at most once a minute, and
// while its data keys are loaded a KMS that cannot be reached does not
// make the server unready (cachedKEKProbe).
func (r *Runtime) Checks() []ReadinessCheck {
	keyring := r.cfg.Keyring
	var checks []ReadinessCheck
	if p, ok := r.cfg.Store.(Pinger); ok {
		checks = append(checks, ReadinessCheck{Name: "store", Probe: p.Ping})
	}
	for _, k := range keyring.Configured() {
		sc, ok := k.(kek.StatusChecker)
		if !ok {
			continue
		}
		probe := observedStatus(sc, k.ID(), keyring.CallObserver(k))
		check := ReadinessCheck{Name: "kek", ID: k.ID()}
		if keyring.IsCached(k.ID()) {
			probe = throttleProbe(boundedStatus(probe, cachedKEKStatusBound), cachedKEKStatusEvery, time.Now)
			if keyring.wrapsWithSeveral() {
				probe = severalKEKsProbe(probe, keyring)
			} else {
				probe = cachedKEKProbe(probe, keyring)
			}
			id := k.ID()
			check.DataKeys = func() (KEKDataKeys, bool) { return keyring.DataKeyKEK(id) }
		}
		check.Probe = probe
		checks = append(checks, check)
	}
	return append(checks, ReadinessCheck{Name: "keyring", Probe: func(context.Context) error { return keyring.Ready() }})
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

// cachedKEKStatusBound bounds the status read of a KEK in cached envelope
// mode: a metadata read a healthy KMS answers in milliseconds, even across
// regions.
const cachedKEKStatusBound = time.Second

// boundedStatus gives each call of status at most bound, and less than
// the readiness poll's own timeout (ctx's deadline). A KMS that hangs
// then fails the call as an outage — which a replica with its data keys
// loaded serves through (cachedKEKProbe, severalKEKsProbe) — instead of
// outlasting the poll, which would count the check unreachable and take
// the replica out for as long as the call hangs: every replica at once,
// at each status read, during a KMS outage that hangs rather than
// refuses. It also keeps a start's first poll from waiting for it.
func boundedStatus(status func(context.Context) error, bound time.Duration) func(context.Context) error {
	return func(ctx context.Context) error {
		limit := bound
		if deadline, ok := ctx.Deadline(); ok {
			limit = min(limit, time.Until(deadline)*9/10)
		}
		ctx, cancel := context.WithTimeout(ctx, limit)
		defer cancel()
		return status(ctx)
	}
}

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
func cachedKEKProbe(status func(context.Context) error, keyring *Keyring) func(context.Context) error {
	return func(ctx context.Context) error {
		err := status(ctx)
		if kek.Classify(err).Outage() && keyring.Ready() == nil {
			return nil
		}
		return err
	}
}
