package vaultapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/kek"
)

// Check statuses reported by /readyz.
const (
	// CheckPending: the check has not completed yet (first poll still
	// running, or the JWKS not loaded yet).
	CheckPending = "pending"
	// CheckOK: the dependency answered and is usable.
	CheckOK = "ok"
	// CheckUnreachable: the dependency could not be reached or did not
	// answer in time. Nothing is known to be wrong with it; it may come
	// back by itself.
	CheckUnreachable = "unreachable"
	// CheckFailing: the dependency answered and refused (a disabled key,
	// a missing permission, an unmigrated schema). An operator has to act.
	CheckFailing = "failing"
	// CheckDegraded: the dependency is unreachable or refuses, and the
	// server serves without it (one of several KEKs that each open the
	// data keys). It does not make the server unready.
	CheckDegraded = "degraded"
)

// DataKeys is what a KEK of cached envelope mode does for the data keys,
// as /readyz shows it.
type DataKeys struct {
	Opens int `json:"opens"` // data keys it opened when last asked
	Wraps int `json:"wraps"` // data keys it wraps
	Total int `json:"total"` // data keys stored
}

// ErrPending is what a probe returns while its dependency has not been
// loaded for the first time; /readyz reports the check as pending.
var ErrPending = errors.New("not loaded yet")

// Check is one dependency that readiness polls. Probe must be cheap: it
// runs every poll interval on every replica, so a KEK probe reads key
// metadata and never encrypts or decrypts.
type Check struct {
	// Name is the kind of dependency: "store", "kek" or "jwks".
	Name string
	// ID tells checks of one kind apart (the KEK id); may be empty.
	ID string
	// Probe reports the dependency's state: nil when usable. Errors are
	// classified as unreachable when kek.Classify calls them an outage
	// (an Unavailable() bool method returning true, as
	// *broker.UnavailableError has, a timeout or a network error) and as
	// failing otherwise.
	Probe func(ctx context.Context) error
	// DataKeys, when set, reports the data keys of a KEK in cached
	// envelope mode; read at each /readyz, so it must be cheap.
	DataKeys func() *DataKeys
}

// ReadinessConfig configures NewReadiness.
type ReadinessConfig struct {
	Checks []Check
	// Timeout bounds each probe; a probe that takes longer is reported
	// unreachable. Default 3s.
	Timeout time.Duration
	// Logger receives each change of a check's status, with the error
	// text the /readyz body leaves out. Default slog.Default().
	Logger *slog.Logger
}

// Readiness holds the last polled status of each dependency. Poll
// refreshes it (a background loop calls Poll on an interval); /readyz
// only reads it, so a probe of the load balancer never costs a call to a
// KMS or the database.
type Readiness struct {
	checks  []Check
	timeout time.Duration
	log     *slog.Logger
	state   []checkState
}

type checkState struct {
	result  atomic.Pointer[CheckResult]
	running atomic.Bool // a probe that outlived its timeout is still running
}

// CheckResult is one check as /readyz reports it. It carries no error
// text: /readyz is unauthenticated, and error texts name hosts, key ARNs
// and URLs. The log has them.
type CheckResult struct {
	Name      string     `json:"name"`
	ID        string     `json:"id,omitempty"`
	Status    string     `json:"status"`
	Since     *time.Time `json:"since,omitempty"`     // when Status last changed
	CheckedAt *time.Time `json:"checkedAt,omitempty"` // when the last probe ended
	DataKeys  *DataKeys  `json:"dataKeys,omitempty"`
	err       error
}

// NewReadiness returns a Readiness whose checks are all pending until the
// first Poll. Check names must be non-empty and each probe set.
func NewReadiness(cfg ReadinessConfig) (*Readiness, error) {
	if cfg.Timeout == 0 {
		cfg.Timeout = 3 * time.Second
	}
	if cfg.Timeout < 0 {
		return nil, errors.New("vaultapi: ReadinessConfig.Timeout must be positive")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	r := &Readiness{checks: cfg.Checks, timeout: cfg.Timeout, log: cfg.Logger, state: make([]checkState, len(cfg.Checks))}
	for i, c := range cfg.Checks {
		if c.Name == "" || c.Probe == nil {
			return nil, fmt.Errorf("vaultapi: ReadinessConfig.Checks[%d] needs a Name and a Probe", i)
		}
		r.state[i].result.Store(&CheckResult{Name: c.Name, ID: c.ID, Status: CheckPending})
	}
	return r, nil
}

// Poll runs every probe once, concurrently, and records the results. It
// returns when every probe has finished or timed out; a probe that ignores
// its context is left to finish in the background and is not started
// again until it has.
func (r *Readiness) Poll(ctx context.Context) {
	var wg sync.WaitGroup
	for i := range r.checks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.pollOne(ctx, i)
		}()
	}
	wg.Wait()
}

func (r *Readiness) pollOne(ctx context.Context, i int) {
	c, st := r.checks[i], &r.state[i]
	if !st.running.CompareAndSwap(false, true) {
		r.record(i, fmt.Errorf("previous probe still running: %w", context.DeadlineExceeded))
		return
	}
	pctx, cancel := context.WithTimeout(ctx, r.timeout)
	done := make(chan error, 1)
	go func() {
		defer st.running.Store(false)
		done <- c.Probe(pctx)
	}()
	var err error
	select {
	case err = <-done:
	case <-pctx.Done():
		err = fmt.Errorf("probe did not answer within %s: %w", r.timeout, context.DeadlineExceeded)
	}
	cancel()
	if ctx.Err() != nil {
		return // shutting down: the result says nothing about the dependency
	}
	r.record(i, err)
}

func (r *Readiness) record(i int, err error) {
	c := r.checks[i]
	now := time.Now().UTC()
	prev := r.state[i].result.Load()
	next := &CheckResult{Name: c.Name, ID: c.ID, Status: classifyProbe(err), CheckedAt: &now, err: err}
	next.Since = prev.Since
	if prev.Status != next.Status || next.Since == nil {
		next.Since = &now
	}
	r.state[i].result.Store(next)
	if prev.Status == next.Status {
		return
	}
	attrs := []slog.Attr{slog.String("check", c.Name), slog.String("status", next.Status), slog.String("was", prev.Status)}
	if c.ID != "" {
		attrs = append(attrs, slog.String("id", c.ID))
	}
	level := slog.LevelInfo
	if err != nil && next.Status != CheckPending {
		level = slog.LevelWarn
		attrs = append(attrs, slog.String("error", err.Error()))
	}
	r.log.LogAttrs(context.Background(), level, "readiness check changed", attrs...)
}

// classifyProbe maps a probe's error to a check status: an outage by
// kek.Classify (which *broker.UnavailableError counts as one) is
// unreachable, any other error failing.
func classifyProbe(err error) string {
	switch {
	case err == nil:
		return CheckOK
	case errors.Is(err, ErrPending):
		return CheckPending
	case isDegraded(err):
		return CheckDegraded
	case kek.Classify(err).Outage():
		return CheckUnreachable
	default:
		return CheckFailing
	}
}

// isDegraded reports an error that says the server serves without the
// dependency (a Degraded() bool method returning true).
func isDegraded(err error) bool {
	var d interface{ Degraded() bool }
	return errors.As(err, &d) && d.Degraded()
}

// Results returns the last result of every check, in configuration order.
func (r *Readiness) Results() []CheckResult {
	out := make([]CheckResult, len(r.state))
	for i := range r.state {
		out[i] = *r.state[i].result.Load()
		if dk := r.checks[i].DataKeys; dk != nil {
			out[i].DataKeys = dk()
		}
	}
	return out
}

// servable: a check in this status leaves the server ready.
func servable(status string) bool { return status == CheckOK || status == CheckDegraded }

// Ready reports whether every check's last result is ok (or degraded).
func (r *Readiness) Ready() bool {
	for i := range r.state {
		if !servable(r.state[i].result.Load().Status) {
			return false
		}
	}
	return true
}

// CodeNotReady is the code of a /readyz answer while a check is not ok.
const CodeNotReady = "NOT_READY"

type healthBody struct {
	Status  string `json:"status"`
	Version string `json:"version,omitempty"`
}

type readyBody struct {
	// Error and Code are set when not ready, so the body is also a
	// standard error body.
	Error  string        `json:"error,omitempty"`
	Code   string        `json:"code,omitempty"`
	Status string        `json:"status"`
	Checks []CheckResult `json:"checks"`
	// Rollout is what the rollout of a newly configured KEK waits for;
	// absent when the replica announces nothing.
	Rollout *broker.RolloutStatus `json:"rollout,omitempty"`
}

// healthz says the process serves HTTP; it checks no dependency, so a
// KMS or database outage never gets the process restarted.
func (a *API) healthz(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	writeJSON(w, http.StatusOK, healthBody{Status: "ok", Version: a.version})
}

// readyz reports the last polled status of every dependency: 200 when all
// are ok, 503 otherwise, so a load balancer takes the replica out.
func (a *API) readyz(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-store")
	results := a.readiness.Results()
	body := readyBody{Status: "ready", Checks: results}
	if a.rollout != nil {
		body.Rollout = a.rollout()
	}
	var bad []string
	for _, c := range results {
		if !servable(c.Status) {
			name := c.Name
			if c.ID != "" {
				name += " " + c.ID
			}
			bad = append(bad, name+" "+c.Status)
		}
	}
	if len(bad) == 0 {
		writeJSON(w, http.StatusOK, body)
		return
	}
	body.Status, body.Code = "not_ready", CodeNotReady
	body.Error = "not ready: " + strings.Join(bad, ", ")
	writeJSON(w, http.StatusServiceUnavailable, body)
}
