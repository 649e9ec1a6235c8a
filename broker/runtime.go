package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"
)

// The runtime: the domain's background work in a server, and the rules
// that decide whether the server is ready.

// KeyringRefreshInterval is how often a server reloads its data keys: the
// delay after which a revoked KMS key stops fetches, after which a data
// key another replica made is used for new wraps, after which a replica
// mints a data key past its maximum age, and after which a deleted data
// key is zeroed in this replica's memory.
const KeyringRefreshInterval = 5 * time.Minute

// MinRewrapInterval is the shortest RewrapSchedule.Interval.
const MinRewrapInterval = time.Second

// Pauses of the runtime's loops that are not configuration.
const (
	// keyringRetryInterval replaces KeyringRefreshInterval until the
	// data keys load, so a replica that started during a KMS outage
	// becomes ready by itself.
	keyringRetryInterval = 5 * time.Second
	// kekRetryFirst and kekRetryMax bound the backoff of the start-up
	// KEK check while the KEK is unavailable.
	kekRetryFirst = time.Second
	kekRetryMax   = 30 * time.Second
	// DefaultKEKCheckTimeout bounds one start-up KEK check. Remote
	// providers bound each call themselves (10 s by default); this
	// covers a Status call plus a wrap and an unwrap.
	DefaultKEKCheckTimeout = 45 * time.Second
	// cachedKEKStatusEvery spaces the status calls of a KEK in cached
	// envelope mode. In cached mode no fetch calls the KMS; polling its
	// metadata at the readiness interval would be the only KMS traffic
	// of a busy server (and a cost on a metered KMS), while a refusal is
	// still seen within a minute.
	cachedKEKStatusEvery = time.Minute
	// rowCountTimeout bounds one refresh of the row counts.
	rowCountTimeout = 30 * time.Second
)

// RuntimeConfig configures a Runtime.
type RuntimeConfig struct {
	// Store is required. When it is a Pinger, readiness checks it.
	Store Store
	// Keyring is required: the runtime refreshes its data keys, checks
	// its active KEK at start and its configured KEKs for readiness.
	Keyring *Keyring
	// Rewrap is the schedule of the background re-wrap job.
	Rewrap RewrapSchedule
	// Rollout announces this replica's KEKs and waits for the others
	// before a newly configured KEK is used (rollout.go), when the store
	// is a ReplicaStore and Rollout.Heartbeat is positive.
	Rollout RolloutConfig
	// OnRewrapRun, when set, is called after each background re-wrap run.
	OnRewrapRun func(*RewrapResult, error)
	// Audit is the audit table's upkeep, run when the store is an
	// AuditKeeper.
	Audit AuditSchedule
	// CountRowsEvery, when positive, makes the runtime count the rows
	// per KEK and read the re-wrap state at Start and then this often
	// (RowCounts): counting groups the whole KEK index, so it runs on
	// this clock, not on every scrape of every replica.
	CountRowsEvery time.Duration
	// AuditSeal, when set, gets the audit key loaded into it at Start
	// (retried while a KEK is unavailable), and the settled audit rows
	// are then sealed every AuditSealEvery (docs/audit.md).
	AuditSeal      *AuditSeal
	AuditSealEvery time.Duration
	// KEKCheckTimeout bounds one start-up KEK check; default
	// DefaultKEKCheckTimeout.
	KEKCheckTimeout time.Duration
	// Logger receives the runtime's events; default slog.Default().
	Logger *slog.Logger
	// Now is the re-wrap job's clock (its data-key grace); default
	// time.Now.
	Now func() time.Time
	// Wait pauses a loop for d and reports false when ctx ended first;
	// default a timer. Tests step the loops with it.
	Wait func(ctx context.Context, d time.Duration) bool
}

// RewrapSchedule is the background re-wrap job of a server. Every
// replica runs it; the store's lock (RewrapLocker) lets one of them work
// at a time, and another takes over within an interval when that one
// dies.
type RewrapSchedule struct {
	Enabled bool
	// Interval is the pause between runs; at least MinRewrapInterval.
	Interval time.Duration
	// BatchSize and RowsPerSecond are RewrapConfig's.
	BatchSize     int
	RowsPerSecond float64
	// Runner names this replica in the job's state; default the host
	// name and process id.
	Runner string
}

func (c *RuntimeConfig) validate() error {
	if c.Store == nil {
		return errors.New("broker: RuntimeConfig.Store is required")
	}
	if c.Keyring == nil {
		return errors.New("broker: RuntimeConfig.Keyring is required")
	}
	if c.Rewrap.Enabled && c.Rewrap.Interval < MinRewrapInterval {
		return fmt.Errorf("broker: RuntimeConfig.Rewrap.Interval must be at least %s", MinRewrapInterval)
	}
	if c.AuditSeal != nil && c.AuditSealEvery <= 0 {
		return errors.New("broker: RuntimeConfig.AuditSealEvery must be positive with an AuditSeal")
	}
	if c.Rollout.Heartbeat < 0 || c.Rollout.ExpectedReplicas < 0 {
		return errors.New("broker: RuntimeConfig.Rollout must not be negative")
	}
	if c.Audit.Retention != 0 && c.Audit.Retention < MinAuditRetention {
		return fmt.Errorf("broker: RuntimeConfig.Audit.Retention must be 0 or at least %s", MinAuditRetention)
	}
	if c.CountRowsEvery < 0 {
		return errors.New("broker: RuntimeConfig.CountRowsEvery must not be negative")
	}
	if c.KEKCheckTimeout == 0 {
		c.KEKCheckTimeout = DefaultKEKCheckTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Wait == nil {
		c.Wait = wait
	}
	if c.Rewrap.Runner == "" {
		host, _ := os.Hostname()
		c.Rewrap.Runner = fmt.Sprintf("%s pid %d", host, os.Getpid())
	}
	if c.Rollout.Name == "" {
		c.Rollout.Name = c.Rewrap.Runner
	}
	return nil
}

// wait is RuntimeConfig.Wait's default.
func wait(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// Runtime owns a server's background work: the keyring's data-key
// refresh (and with it the data keys' rotation by age), the re-wrap
// schedule, the start-up KEK check and its retries, the row counts and
// the audit table's upkeep (AuditKeeper stores);
// and it holds the readiness rules (Checks). New refuses what must stop
// a start; Start runs the rest until Close.
type Runtime struct {
	cfg    RuntimeConfig
	job    *RewrapJob // nil when the schedule is off
	kekOK  chan struct{}
	retry  bool // the start-up KEK check failed with an outage: Start retries it
	counts *rowCounter
	// rollout is nil when this replica announces nothing.
	rollout *rollout
	audit   *auditUpkeeper // nil when the store is no AuditKeeper

	startOnce, closeOnce sync.Once
	cancel               context.CancelFunc
	wg                   sync.WaitGroup
}

// NewRuntime checks what must hold before a server starts, and returns
// the runtime that Start runs. It returns a *RetiredKEKError when rows
// are wrapped by a KEK the keyring no longer has (they would not open),
// the error of a re-wrap schedule the job refuses, and a *KEKCheckError
// when the active KEK answers but cannot wrap and unwrap — a
// configuration error, since a broker that cannot wrap would accept
// traffic only to fail every /init. An active KEK that is merely
// unavailable (a KMS outage, data keys not loaded yet) does not stop the
// start: KEKChecked stays open and Start retries the check with backoff.
func NewRuntime(ctx context.Context, cfg RuntimeConfig) (*Runtime, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	r := &Runtime{cfg: cfg, kekOK: make(chan struct{})}
	if err := r.checkRetiredKEKs(ctx); err != nil {
		return nil, err
	}
	if cfg.Rewrap.Enabled {
		job, err := NewRewrapJob(RewrapConfig{Store: cfg.Store, Keyring: cfg.Keyring, BatchSize: cfg.Rewrap.BatchSize,
			RowsPerSecond: cfg.Rewrap.RowsPerSecond, Runner: cfg.Rewrap.Runner, Logger: cfg.Logger, Now: cfg.Now, AuditSeal: cfg.AuditSeal})
		if err != nil {
			return nil, fmt.Errorf("the re-wrap job cannot run: %w", err)
		}
		r.job = job
	}
	if keeper, ok := cfg.Store.(AuditKeeper); ok {
		r.audit = &auditUpkeeper{keeper: keeper, cfg: cfg.Audit, runner: cfg.Rewrap.Runner, now: cfg.Now, log: cfg.Logger,
			mark: retentionMarker(cfg.AuditSeal, cfg.Store)}
	}
	if cfg.CountRowsEvery > 0 {
		r.counts = &rowCounter{store: cfg.Store, log: cfg.Logger}
		r.counts.locker, _ = cfg.Store.(RewrapLocker)
	}
	switch err := r.checkKEK(ctx); {
	case err == nil:
		close(r.kekOK)
		r.loadAuditKey(ctx)
	case errors.Is(err, errKEKUnavailable):
		cfg.Logger.Error("KEK unavailable at start: serving not-ready, READY=1 withheld until the KEK check passes",
			slog.String("error", err.Error()))
		r.retry = true
	default:
		return nil, err
	}
	r.startRollout(ctx)
	return r, nil
}

// checkRetiredKEKs returns a *DataKeyWrapError when rows need a data key
// that only KEKs no longer configured wrap (checked from the store alone),
// and a *RetiredKEKError when rows are still wrapped by a KEK that is no
// longer configured. A keyring whose data keys are
// not loaded yet (a KMS outage at start) cannot tell a data key from a
// retired KEK, so the check waits for the next start then.
func (r *Runtime) checkRetiredKEKs(ctx context.Context) error {
	if err := CheckDataKeyWraps(ctx, r.cfg.Store, r.cfg.Keyring); err != nil {
		var wraps *DataKeyWrapError
		switch {
		case errors.As(err, &wraps):
			return err
		case IsUnavailable(err):
			r.cfg.Logger.Warn("not checking the wraps of the data keys: the store is unavailable", slog.String("error", err.Error()))
		default:
			return fmt.Errorf("checking the wraps of the data keys: %w", err)
		}
	}
	if err := r.cfg.Keyring.Ready(); err != nil {
		r.cfg.Logger.Warn("not checking for rows of retired KEKs: the keyring is not ready", slog.String("error", err.Error()))
		return nil
	}
	err := CheckKeyringCoversRows(ctx, r.cfg.Store, r.cfg.Keyring)
	var retired *RetiredKEKError
	if err != nil && !errors.As(err, &retired) {
		return fmt.Errorf("checking for rows of retired KEKs: %w", err)
	}
	return err
}

// KEKChecked is closed once the active KEK has wrapped and unwrapped a
// random key: a server withholds "ready" from its supervisor (systemd's
// READY=1) until then.
func (r *Runtime) KEKChecked() <-chan struct{} { return r.kekOK }

// Start runs the background work until ctx ends or Close is called: the
// retries of a start-up KEK check that found the KEK unavailable, the
// keyring's refresh, the re-wrap schedule, the audit upkeep and the row
// counts (the first count before it returns, so that metrics have numbers
// from the start). Only the first call starts anything.
func (r *Runtime) Start(ctx context.Context) {
	r.startOnce.Do(func() {
		ctx, r.cancel = context.WithCancel(ctx)
		if r.counts != nil {
			// Counted before the re-wrap job starts, the first count
			// shows the state the server started with.
			r.counts.refresh(ctx)
			r.goLoop(func() {
				for r.cfg.Wait(ctx, r.cfg.CountRowsEvery) {
					r.counts.refresh(ctx)
				}
			})
		}
		if r.retry {
			r.goLoop(func() { r.retryKEKCheck(ctx) })
		}
		r.goLoop(func() { r.refreshKeyring(ctx) })
		if r.cfg.AuditSeal != nil {
			r.goLoop(func() { r.runAuditSeal(ctx) })
		}
		if r.rollout != nil {
			r.goLoop(func() { r.rollout.run(ctx, r.cfg.Wait) })
		}
		if r.audit != nil {
			r.goLoop(func() { r.audit.loop(ctx, r.cfg.Wait) })
		}
		if r.job != nil {
			r.goLoop(func() { r.runRewrap(ctx) })
		} else {
			r.cfg.Logger.Info("re-wrap job disabled")
		}
	})
}

func (r *Runtime) goLoop(loop func()) {
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		loop()
	}()
}

// Close stops the background work and waits for it: a re-wrap run in
// progress stops at its next batch and resumes at the next start.
func (r *Runtime) Close() {
	r.closeOnce.Do(func() {
		r.startOnce.Do(func() {}) // a runtime closed before Start never starts
		if r.cancel != nil {
			r.cancel()
		}
		r.wg.Wait()
		if r.rollout != nil {
			r.rollout.leave(context.Background())
		}
	})
}

// refreshKeyring reloads the keyring's data keys until ctx ends; until
// they load it retries every few seconds.
func (r *Runtime) refreshKeyring(ctx context.Context) {
	for {
		pause := KeyringRefreshInterval
		if r.cfg.Keyring.Ready() != nil {
			pause = keyringRetryInterval
		}
		if !r.cfg.Wait(ctx, pause) {
			return
		}
		if err := r.cfg.Keyring.Refresh(ctx); err != nil {
			r.cfg.Logger.Warn("keyring refresh failed", slog.String("error", err.Error()))
		}
	}
}

// runRewrap runs the re-wrap job at once, then every interval, until ctx
// ends.
func (r *Runtime) runRewrap(ctx context.Context) {
	for {
		if r.rolloutWaits() {
			if r.cfg.OnRewrapRun != nil {
				r.cfg.OnRewrapRun(nil, ErrRolloutWaiting)
			}
			if !r.cfg.Wait(ctx, r.cfg.Rewrap.Interval) {
				return
			}
			continue
		}
		res, err := r.job.Run(ctx)
		r.logRewrapRun(ctx, res, err)
		if r.cfg.OnRewrapRun != nil {
			r.cfg.OnRewrapRun(res, err)
		}
		if !r.cfg.Wait(ctx, r.cfg.Rewrap.Interval) {
			return
		}
	}
}

func (r *Runtime) logRewrapRun(ctx context.Context, res *RewrapResult, err error) {
	log := r.cfg.Logger
	switch {
	case errors.Is(err, ErrRewrapBusy):
		log.Debug("re-wrap job runs on another replica")
		return
	case ctx.Err() != nil:
		return
	case res == nil:
		log.Warn("re-wrap job failed", slog.String("error", err.Error()))
		return
	}
	attrs := []slog.Attr{slog.String("active_kek", res.ActiveKEKID), slog.Int64("moved", res.Done),
		slog.Int64("server_rewrapped", res.ServerRewrapped), slog.Int64("skipped", res.Skipped),
		slog.Int64("failed", res.Failed), slog.Float64("rows_per_second", res.RowsPerSecond)}
	if len(res.DataKeysDeleted) > 0 {
		attrs = append(attrs, slog.Any("data_keys_deleted", res.DataKeysDeleted))
	}
	switch {
	case err != nil:
		log.LogAttrs(ctx, slog.LevelWarn, "re-wrap job stopped; it resumes at its next run", append(attrs, slog.String("error", err.Error()))...)
	case res.Failed > 0:
		log.LogAttrs(ctx, slog.LevelError, "re-wrap job left rows it cannot move", attrs...)
	case res.Done > 0 || len(res.DataKeysDeleted) > 0:
		log.LogAttrs(ctx, slog.LevelInfo, "re-wrap job finished", attrs...)
	}
}

// RowCounts is the last count of the rows per KEK id and format, with the
// re-wrap job's state, for metrics.
type RowCounts struct {
	Rows []KEKCount
	// Rewrap is nil when the store has no job lock, or its state could
	// not be read.
	Rewrap *RewrapState
	// At is when the rows were counted; zero before the first count.
	At time.Time
}

// RowCounts returns the last count (RuntimeConfig.CountRowsEvery); the
// zero value before the first, and without counting.
func (r *Runtime) RowCounts() RowCounts {
	if r.counts == nil {
		return RowCounts{}
	}
	r.counts.mu.Lock()
	defer r.counts.mu.Unlock()
	return r.counts.last
}

// rowCounter keeps the last RowCounts.
type rowCounter struct {
	store  RewrapStore
	locker RewrapLocker // nil when the store has no job lock (SQLite)
	log    *slog.Logger

	mu   sync.Mutex
	last RowCounts
}

// refresh counts again; on error the previous count stays and the error
// is logged.
func (c *rowCounter) refresh(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, rowCountTimeout)
	defer cancel()
	rows, err := c.store.KEKCounts(ctx)
	if err != nil {
		if ctx.Err() == nil {
			c.log.Warn("metrics: counting rows per KEK failed", slog.String("error", err.Error()))
		}
		return
	}
	var state *RewrapState
	if c.locker != nil {
		if state, err = c.locker.RewrapState(ctx); err != nil {
			c.log.Warn("metrics: reading the re-wrap state failed", slog.String("error", err.Error()))
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.last = RowCounts{Rows: rows, Rewrap: state, At: time.Now()}
}
