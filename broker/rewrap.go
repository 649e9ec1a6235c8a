package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/keybroker/keybroker/kek"
)

// The re-wrap job moves every row that is not wrapped by the active KEK in
// the bound format — rows of a decrypt-only KEK, and format-1 rows the
// original service wrote — to the active KEK and format 2, so that the old
// KEK can be retired. It works online, in short batches:
//
//  1. list a batch of candidate user ids (RewrapStore.RewrapCandidates),
//     format-1 rows first: a format-1 wrap is bound to nothing, and once
//     none is left the job closes format 1 for good (format1.go);
//  2. read their rows (RewrapBatchStore.RewrapRead, in a transaction
//     scoped to exactly those users);
//  3. unwrap each with its old KEK and seal it with the active one (seal
//     unwraps the fresh wrap again and compares) — no row lock is held
//     while a KMS is called, and the next batch is prepared while the
//     current one is written;
//  4. write each row back compare-and-swap: only if its wrap is still the
//     one read in step 2, together with a kek_rewrap audit row, in one
//     transaction. A row a user rotated, re-wrapped or switched to
//     zero-knowledge meanwhile is left as the user made it.
//
// Every step leaves each row either with its old wrap, which its old KEK
// still opens, or with a verified new one, so the job may be killed at any
// point and started again. Where the active KEK tells which key version
// made a wrap and can re-encrypt it under the newest version itself
// (kek.Versioner and kek.Rewrapper: Vault Transit's rewrap), rows already
// on the active KEK but on an older key version are moved with it, the
// plaintext never leaving the backend. No other provider needs it: AWS KMS
// and Cloud KMS decrypt with whichever key version made a wrap.

// RewrapQuery selects candidate rows of the re-wrap job.
type RewrapQuery struct {
	// ActiveKEKID is the KEK new wraps use. Rows under another id, or in
	// format 1, are listed.
	ActiveKEKID string
	// OnActiveKEK lists the other rows instead: those already under
	// ActiveKEKID in format 2 (the key-version sweep reads them).
	OnActiveKEK bool
	// LegacyOnly lists only the rows in format 1, whatever their KEK id
	// (the job moves them first). Not set with OnActiveKEK.
	LegacyOnly bool
	// After is the last user id of the previous page; "" starts over.
	After string
	// Limit caps the page.
	Limit int
}

// KEKCount is the number of rows with one KEK id, format and mode.
type KEKCount struct {
	KEKID         string
	FormatVersion int
	// Wrapped says the server holds a wrap of these rows; false for
	// zero-knowledge rows, whose KEK id is a leftover that opens nothing.
	Wrapped       bool
	ZeroKnowledge bool
	Rows          int64
}

// RewrapSwap is the move of one row.
type RewrapSwap struct {
	Old   *Vault // the row as read
	New   *Vault // Old with the new wrap (and key check value)
	Audit *AuditEntry
}

// RewrapState is what `kek status` shows about the job.
type RewrapState struct {
	// Running says a runner holds the lock now.
	Running bool
	// Runner names the current or last runner; empty when none ever ran.
	Runner string
	RewrapProgress
}

// Sentinel errors of the re-wrap job.
var (
	// ErrRewrapBusy means another runner holds the job's lock.
	ErrRewrapBusy = errors.New("another keybroker is running the re-wrap job")
	// ErrRewrapLockLost means the runner's lock died under it (its
	// database connection was cut); the run stopped and another runner
	// may have taken over.
	ErrRewrapLockLost = errors.New("the re-wrap job lost its lock")
)

// RewrapProgress is a snapshot of a run.
type RewrapProgress struct {
	// ActiveKEKID is the KEK rows are moved to.
	ActiveKEKID string
	// Total is the number of rows to move when the run started.
	Total int64
	// Done counts rows moved (in a dry run: rows that would move).
	Done int64
	// ServerRewrapped counts rows moved to the active KEK's newest key
	// version by the backend (included in Done).
	ServerRewrapped int64
	// Skipped counts rows a user changed (rotated, re-wrapped, switched to
	// zero-knowledge) between read and write: left as the user made them.
	Skipped int64
	// Failed counts rows that could not be moved (an unknown KEK id, a
	// wrap that does not open); they stay as they are.
	Failed        int64
	StartedAt     time.Time
	UpdatedAt     time.Time
	Finished      bool
	RowsPerSecond float64
	// Error is why the run stopped early; empty while it runs and when it
	// finished.
	Error string
}

// Processed is the number of rows the run has dealt with.
func (p RewrapProgress) Processed() int64 { return p.Done + p.Skipped + p.Failed }

// ETA estimates the time left from the run's average rate; zero when
// done or unknown.
func (p RewrapProgress) ETA() time.Duration {
	left := p.Total - p.Processed()
	if left <= 0 || p.RowsPerSecond <= 0 || p.Finished {
		return 0
	}
	return time.Duration(float64(left) / p.RowsPerSecond * float64(time.Second))
}

// RewrapFailure is a row the job could not move.
type RewrapFailure struct {
	UserID string
	KEKID  string
	Err    error
}

// RewrapResult is the outcome of one run.
type RewrapResult struct {
	RewrapProgress
	// Failures lists failed rows, at most maxReportedFailures of them.
	Failures []RewrapFailure
	// Format1 is the format-1 closure after the run; nil when the run did
	// not get that far.
	Format1 *Format1State
	// Format1ClosedNow says this run closed format 1.
	Format1ClosedNow bool
	// DataKeysDeleted lists the data keys the run deleted (cached
	// envelope mode): older ones no row needed any more.
	DataKeysDeleted []string
}

// RewrapConfig configures a RewrapJob.
type RewrapConfig struct {
	// Store is required; when it is a RewrapLocker, runs of different
	// processes take turns.
	Store   Store
	Keyring *Keyring
	// BatchSize is the number of rows per transaction; default
	// DefaultRewrapBatchSize.
	BatchSize int
	// RowsPerSecond limits the pace; zero means no limit.
	RowsPerSecond float64
	// Concurrency is the number of rows whose KEK calls run at once
	// within a batch; default 8. Remote KEKs gain from it.
	Concurrency int
	// DryRun reads and unwraps every candidate, and writes nothing: it
	// reports how many rows would move and which would fail.
	DryRun bool
	// Runner names this runner in status; default "keybroker".
	Runner string
	// Progress, when set, is called after every batch (from the goroutine
	// that called Run).
	Progress func(RewrapProgress)
	// Logger receives per-row failures (user and KEK ids, never key
	// material); default slog.Default().
	Logger *slog.Logger
	// Now is the clock; default time.Now.
	Now func() time.Time
	// DataKeyGrace is how long after a newer data key was made an old one
	// stays, even with no row left under it; default DefaultDataKeyGrace.
	// Replicas that have not reloaded their data keys since still wrap
	// under the old one; past the grace they normally have. (One that has
	// not, say because its reload failed, has its write refused by the
	// store and retried under the newest: see DataKeyDeleter.)
	DataKeyGrace time.Duration
	// AuditSeal, when it holds a key, MACs the job's audit rows
	// (docs/audit.md).
	AuditSeal *AuditSeal
}

// DefaultDataKeyGrace is three times KeyringRefreshInterval: replicas
// have normally reloaded their data keys by then.
const DefaultDataKeyGrace = 3 * KeyringRefreshInterval

// DefaultRewrapBatchSize is the batch size when none is configured: large
// enough that per-transaction costs vanish, small enough that a batch's
// transaction is short.
const DefaultRewrapBatchSize = 1000

// MaxRewrapBatchSize is the largest RewrapConfig.BatchSize: a batch is
// one transaction, and a larger one holds its row locks for too long.
const MaxRewrapBatchSize = 10000

const (
	maxRewrapPasses     = 8
	maxReportedFailures = 100
)

func (c *RewrapConfig) validate() error {
	if c.Store == nil {
		return errors.New("broker: RewrapConfig.Store is required")
	}
	if c.Keyring == nil {
		return errors.New("broker: RewrapConfig.Keyring is required")
	}
	if c.BatchSize == 0 {
		c.BatchSize = DefaultRewrapBatchSize
	}
	if c.BatchSize < 1 || c.BatchSize > MaxRewrapBatchSize {
		return fmt.Errorf("broker: RewrapConfig.BatchSize must be between 1 and %d", MaxRewrapBatchSize)
	}
	if c.RowsPerSecond < 0 || math.IsNaN(c.RowsPerSecond) || math.IsInf(c.RowsPerSecond, 0) {
		return errors.New("broker: RewrapConfig.RowsPerSecond must be a positive number, or zero for no limit")
	}
	if c.RowsPerSecond > 0 && c.RowsPerSecond < float64(c.BatchSize) {
		// A batch must fit in the limiter's burst, and small batches keep
		// a slow run's progress smooth.
		c.BatchSize = max(1, int(c.RowsPerSecond))
	}
	if c.Concurrency == 0 {
		c.Concurrency = 8
	}
	if c.Concurrency < 1 {
		return errors.New("broker: RewrapConfig.Concurrency must be at least 1")
	}
	if c.Runner == "" {
		c.Runner = "keybroker"
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.DataKeyGrace == 0 {
		c.DataKeyGrace = DefaultDataKeyGrace
	}
	if c.DataKeyGrace < 0 {
		return errors.New("broker: RewrapConfig.DataKeyGrace must not be negative")
	}
	return nil
}

// RewrapJob is the re-wrap job. One RewrapJob runs one run at a time; a
// RewrapLocker store keeps runs of different processes apart too.
type RewrapJob struct {
	cfg     RewrapConfig
	store   Store
	locker  RewrapLocker  // nil: single node
	limiter *rate.Limiter // nil: no limit
	format1 *format1Gate
	running sync.Mutex

	progress atomic.Pointer[RewrapProgress]
	// sweptVersion is the active KEK's newest key version that a
	// finished sweep left every row on, so later runs skip reading every
	// row until the version moves again.
	sweptKEK     string
	sweptVersion int
}

// NewRewrapJob returns a job.
func NewRewrapJob(cfg RewrapConfig) (*RewrapJob, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	j := &RewrapJob{cfg: cfg, store: cfg.Store, format1: newFormat1Gate(cfg.Store)}
	j.locker, _ = cfg.Store.(RewrapLocker)
	if cfg.RowsPerSecond > 0 {
		j.limiter = rate.NewLimiter(rate.Limit(cfg.RowsPerSecond), cfg.BatchSize)
	}
	return j, nil
}

// Progress returns the latest snapshot of the current or last run, for
// metrics; the zero value before the first batch.
func (j *RewrapJob) Progress() RewrapProgress {
	if p := j.progress.Load(); p != nil {
		return *p
	}
	return RewrapProgress{}
}

// rewrapRun is the state of one Run.
type rewrapRun struct {
	active string
	lease  RewrapLease
	p      RewrapProgress
	// latest is the active KEK's newest key version during a sweep.
	latest   int
	failures []RewrapFailure
	// failed holds the rows that failed in this run: later passes skip
	// them rather than fail (and count) them again.
	failed map[string]bool
	// wouldMove holds, in a dry run, the rows counted as moved: the move
	// passes list the format-1 rows the legacy passes counted already.
	wouldMove map[string]bool
	// reported is when progress was last written for status readers.
	reported time.Time
	// format1 is the closure state once the run has read it.
	format1       *Format1State
	format1Closed bool // this run closed format 1
}

// Run moves every candidate row. It walks the candidates in user-id order,
// the format-1 rows first and alone, and again only for rows users changed
// under it (at most maxRewrapPasses passes); rows that cannot move — an
// unknown KEK id, a corrupt wrap, a format-1 wrap once format 1 is closed
// — are counted once, left as they are and listed in the result. Between
// the format-1 rows and the others it closes format 1 when none is left
// (a dry run never does). Then, for a versioned active KEK whose backend
// re-wraps, it sweeps the rows of older key versions. It returns
// ErrRewrapBusy when another runner holds the lock (and a nil result),
// ErrRewrapLockLost when the lock died mid-run, and store or KEK outages
// as *UnavailableError; the work done until then stays done, and the next
// Run continues from there.
func (j *RewrapJob) Run(ctx context.Context) (*RewrapResult, error) {
	j.running.Lock()
	defer j.running.Unlock()
	var lease RewrapLease
	if j.locker != nil && !j.cfg.DryRun {
		var err error
		if lease, err = j.locker.RewrapLock(ctx, j.cfg.Runner); err != nil {
			return nil, err
		}
	}
	// In cached envelope mode the rows go to the newest data key, which
	// another replica or an operator may have minted since this one
	// reloaded.
	if err := j.cfg.Keyring.syncDataKeys(ctx); err != nil {
		j.cfg.Logger.Warn("re-wrap: reloading the data keys", slog.String("error", err.Error()))
	}
	r := &rewrapRun{active: j.cfg.Keyring.ActiveID(), lease: lease, failed: map[string]bool{}, wouldMove: map[string]bool{}}
	now := j.cfg.Now()
	r.p = RewrapProgress{ActiveKEKID: r.active, StartedAt: now, UpdatedAt: now}

	err := j.runLocked(ctx, r)
	var deleted []string
	if err == nil && !j.cfg.DryRun {
		var derr error
		if deleted, derr = j.deleteDataKeys(ctx, r); derr != nil {
			// The rows are moved; the next run deletes what is left.
			j.cfg.Logger.Warn("re-wrap: deleting data keys no row needs", slog.String("error", derr.Error()))
		}
	}
	r.p.Finished = err == nil
	if err != nil {
		r.p.Error = err.Error()
	}
	j.tick(r)
	if r.lease != nil {
		// The run's ctx may be cancelled: still record the end and let
		// the lock go, within a bound. If this fails the lock dies with
		// the connection anyway.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		if rerr := r.lease.Release(rctx, r.p); rerr != nil && err == nil {
			j.cfg.Logger.Warn("re-wrap: releasing the lock", slog.String("error", rerr.Error()))
		}
		cancel()
	}
	return &RewrapResult{RewrapProgress: r.p, Failures: r.failures, Format1: r.format1, Format1ClosedNow: r.format1Closed, DataKeysDeleted: deleted}, err
}

// deleteDataKeys deletes the data keys no row needs any more: every one
// but the newest and the active one, with no row with a server wrap under
// it, and for which a newer data key was made at least DataKeyGrace ago.
// The store checks again, atomically, that the key is not the newest and
// that no row names it. This replica's keyring is reloaded afterwards,
// which zeroes the deleted keys here; other replicas zero them at their
// next reload.
func (j *RewrapJob) deleteDataKeys(ctx context.Context, r *rewrapRun) ([]string, error) {
	if j.cfg.Keyring.dataKeys == nil {
		return nil, nil
	}
	list, err := j.cfg.Keyring.dataKeys.cfg.DataKeys.DataKeyList(ctx)
	if err != nil {
		return nil, err
	}
	now := j.cfg.Now()
	var candidates []int
	for i := range len(list) - 1 {
		if list[i].ID != r.active && now.Sub(list[i+1].CreatedAt) >= j.cfg.DataKeyGrace {
			candidates = append(candidates, i)
		}
	}
	if len(candidates) == 0 {
		return nil, nil // the usual case: rows are counted only when a key may go
	}
	counts, err := j.store.KEKCounts(ctx)
	if err != nil {
		return nil, err
	}
	rows := map[string]int64{}
	for _, c := range counts {
		if c.Wrapped {
			rows[c.KEKID] += c.Rows
		}
	}
	var deleted []string
	for _, i := range candidates {
		dk, successor := list[i], list[i+1]
		if rows[dk.ID] > 0 {
			continue
		}
		ok, err := j.store.DataKeyDelete(ctx, dk.ID)
		if err != nil {
			return deleted, err
		}
		if ok {
			deleted = append(deleted, dk.ID)
			j.cfg.Logger.Info("data key deleted: no row needs it", slog.String("data_key_id", dk.ID),
				slog.String("newer_data_key_id", successor.ID), slog.Time("newer_created_at", successor.CreatedAt))
		}
	}
	if len(deleted) > 0 {
		if err := j.cfg.Keyring.Refresh(ctx); err != nil {
			j.cfg.Logger.Warn("re-wrap: reloading the data keys after deleting some", slog.String("error", err.Error()))
		}
	}
	return deleted, nil
}

func (j *RewrapJob) runLocked(ctx context.Context, r *rewrapRun) error {
	counts, err := j.store.KEKCounts(ctx)
	if err != nil {
		return err
	}
	var legacy int64
	for _, c := range counts {
		if c.Wrapped && !c.ZeroKnowledge && (c.KEKID != r.active || c.FormatVersion == FormatLegacy) {
			r.p.Total += c.Rows
		}
		if c.Wrapped && !c.ZeroKnowledge && c.FormatVersion == FormatLegacy {
			legacy += c.Rows
		}
	}
	j.tick(r)
	if r.lease != nil {
		r.reported = r.p.UpdatedAt
		if err := r.lease.Report(ctx, r.p); err != nil {
			return err
		}
	}
	// Format-1 rows first: until they are upgraded and format 1 closed,
	// a pasted format-1 wrap opens.
	if legacy > 0 {
		if err := j.passes(ctx, r, passLegacy); err != nil {
			return err
		}
	}
	if err := j.closeFormat1(ctx, r); err != nil {
		if IsUnavailable(err) || ctx.Err() != nil {
			return err
		}
		// Not the rows' business: move them anyway. Format-1 rows are
		// then refused (the gate cannot tell either), and the next run
		// tries to close again.
		j.cfg.Logger.Warn("re-wrap: cannot read or close the format-1 state", slog.String("error", err.Error()))
	}
	if r.p.Total > 0 {
		if err := j.passes(ctx, r, passMove); err != nil {
			return err
		}
	}
	return j.sweep(ctx, r)
}

// passes walks the candidates of kind until none is left that it can
// move. Another pass is needed only for rows a user changed under the
// previous one; it lists what is still left, and each pass that follows
// must have moved something.
func (j *RewrapJob) passes(ctx context.Context, r *rewrapRun, kind passKind) error {
	for range maxRewrapPasses {
		skipped := r.p.Skipped
		_, moved, err := j.pass(ctx, r, kind)
		if err != nil {
			return err
		}
		if r.p.Skipped == skipped || moved == 0 || j.cfg.DryRun {
			break
		}
	}
	return nil
}

// closeFormat1 closes format 1 when no row with a format-1 server wrap is
// left. The store checks that and closes in one atomic step, so a
// format-1 row committed before it — one this run's passes could not see
// yet — keeps format 1 open for the next run. A dry run only reads the
// state.
func (j *RewrapJob) closeFormat1(ctx context.Context, r *rewrapRun) error {
	st, err := j.store.Format1State(ctx)
	if err != nil {
		return err
	}
	if !st.Closed && !j.cfg.DryRun {
		if st, err = j.store.Format1Close(ctx, j.cfg.Runner); err != nil {
			return err
		}
		if st.Closed {
			r.format1Closed = true
			j.cfg.Logger.Info("re-wrap: no format-1 row left; format 1 is closed for good, a format-1 wrap no longer opens",
				slog.String("runner", j.cfg.Runner))
		}
	}
	r.format1 = &st
	j.format1.learn(st)
	return nil
}

// sweep moves rows of the active KEK made by an older version of its
// backend key, when the backend can re-encrypt server-side.
func (j *RewrapJob) sweep(ctx context.Context, r *rewrapRun) error {
	active, err := j.cfg.Keyring.Lookup(r.active)
	if err != nil {
		return err
	}
	versioner, ok := active.(kek.Versioner)
	if _, canRewrap := active.(kek.Rewrapper); !ok || !canRewrap {
		return nil
	}
	latest, err := observed(j.cfg.Keyring, active, kek.OpLatestVersion, func() (int, error) { return versioner.LatestVersion(ctx) })
	if err != nil {
		return classifyKEKError(errors.New("latest key version"), err)
	}
	if j.sweptKEK == r.active && j.sweptVersion == latest {
		return nil
	}
	r.latest = latest
	// One pass: it reads every row of the active KEK. A row a user
	// changed meanwhile got a fresh wrap, made by the newest version.
	if _, _, err := j.pass(ctx, r, passSweep); err != nil {
		return err
	}
	if !j.cfg.DryRun {
		j.sweptKEK, j.sweptVersion = r.active, latest
	}
	return nil
}

// passKind is what a pass lists and moves.
type passKind int

const (
	// passLegacy: rows in format 1, to the active KEK in format 2.
	passLegacy passKind = iota
	// passMove: rows not on the active KEK in format 2.
	passMove
	// passSweep: rows on the active KEK made by an older key version.
	passSweep
)

// pass walks the candidates once, in user-id order. Two stages overlap:
// a producer lists, reads and does the KEK work of the next batch while
// this goroutine writes the current one, so the KEK's CPU (or a KMS's
// latency) and the database's write time add up less. The batches hold
// disjoint users, so working one ahead changes nothing a batch compares.
func (j *RewrapJob) pass(ctx context.Context, r *rewrapRun, kind passKind) (listed, moved int64, err error) {
	ctx, cancel := context.WithCancel(ctx)
	batches := make(chan *preparedBatch)
	// Rows that failed in earlier passes; the producer reads its own copy
	// while this goroutine records new failures.
	skip := maps.Clone(r.failed)
	maps.Copy(skip, r.wouldMove)
	go j.produce(ctx, r, kind, skip, batches)
	defer func() {
		// Stop the producer and wait for it: nothing of this pass may
		// outlive it.
		cancel()
		for range batches {
		}
	}()
	for b := range batches {
		if b.err != nil {
			return listed, moved, b.err
		}
		listed += int64(len(b.ids))
		n, err := j.commitBatch(ctx, r, b, kind)
		moved += n
		if err != nil {
			return listed, moved, err
		}
	}
	return listed, moved, ctx.Err()
}

// preparedBatch is a batch read and through the KEK work, not yet written.
type preparedBatch struct {
	ids      []string
	vaults   []*Vault
	outcomes []outcome
	err      error
}

// produce sends the pass's batches, prepared, until the candidates run
// out (then it closes batches) or ctx ends.
func (j *RewrapJob) produce(ctx context.Context, r *rewrapRun, kind passKind, skip map[string]bool, batches chan<- *preparedBatch) {
	defer close(batches)
	send := func(b *preparedBatch) bool {
		select {
		case batches <- b:
			return true
		case <-ctx.Done():
			return false
		}
	}
	q := RewrapQuery{ActiveKEKID: r.active, OnActiveKEK: kind == passSweep, LegacyOnly: kind == passLegacy, Limit: j.cfg.BatchSize}
	for {
		ids, err := j.store.RewrapCandidates(ctx, q)
		if err != nil {
			send(&preparedBatch{err: err})
			return
		}
		if len(ids) == 0 {
			return
		}
		q.After = ids[len(ids)-1]
		ids = slices.DeleteFunc(ids, func(id string) bool { return skip[id] })
		if len(ids) == 0 {
			continue
		}
		if j.limiter != nil {
			if err := j.limiter.WaitN(ctx, len(ids)); err != nil {
				send(&preparedBatch{err: err})
				return
			}
		}
		vaults, err := j.read(ctx, ids)
		if err != nil {
			send(&preparedBatch{err: err})
			return
		}
		b := &preparedBatch{ids: ids, vaults: vaults, outcomes: make([]outcome, len(vaults))}
		// Whether format-1 wraps may open, asked once per batch.
		var format1 error
		if slices.ContainsFunc(vaults, needsFormat1) {
			if format1 = j.format1.check(ctx); IsUnavailable(format1) {
				send(&preparedBatch{err: format1})
				return
			}
		}
		sem := make(chan struct{}, j.cfg.Concurrency)
		var wg sync.WaitGroup
		for i, v := range vaults {
			sem <- struct{}{}
			wg.Add(1)
			go func() {
				defer func() { <-sem; wg.Done() }()
				b.outcomes[i] = j.prepare(ctx, r, v, kind, format1)
			}()
		}
		wg.Wait()
		if !send(b) {
			return
		}
	}
}

// outcome is what the KEK step decided for one row.
type outcome struct {
	swap   *RewrapSwap // nil: nothing to write
	server bool        // moved by the backend's rewrap
	skip   bool        // changed since it was listed
	fail   error
}

// commitBatch writes a prepared batch and counts it.
func (j *RewrapJob) commitBatch(ctx context.Context, r *rewrapRun, b *preparedBatch, kind passKind) (moved int64, err error) {
	if r.lease != nil {
		if err := r.lease.Held(ctx); err != nil {
			return 0, fmt.Errorf("%w: %w", ErrRewrapLockLost, err)
		}
	}
	// A row listed but deleted before the read counts as skipped.
	r.p.Skipped += int64(len(b.ids) - len(b.vaults))

	var swaps []RewrapSwap
	var swapOf []int // index into outcomes of each swap
	for i, o := range b.outcomes {
		switch {
		case o.fail != nil:
			if err := j.failed(ctx, r, b.vaults[i], o.fail); err != nil {
				return moved, err
			}
		case o.skip:
			r.p.Skipped++
		case o.swap != nil:
			swaps = append(swaps, *o.swap)
			swapOf = append(swapOf, i)
		}
	}
	if j.cfg.DryRun {
		for _, i := range swapOf {
			if kind != passSweep {
				r.wouldMove[b.vaults[i].UserID] = true
			}
			r.p.Done++
			if b.outcomes[i].server {
				r.p.ServerRewrapped++
			}
		}
		j.tick(r)
		return int64(len(swaps)), nil
	}
	applied, err := j.apply(ctx, swaps)
	if err != nil {
		return moved, err
	}
	for k, ok := range applied {
		i := swapOf[k]
		switch {
		case ok:
			moved++
			r.p.Done++
			if b.outcomes[i].server {
				r.p.ServerRewrapped++
			}
		default:
			r.p.Skipped++
		}
	}
	j.tick(r)
	// Status readers need no more than a second's precision, and each
	// report is a durable write.
	if r.lease != nil && r.p.UpdatedAt.Sub(r.reported) >= time.Second {
		r.reported = r.p.UpdatedAt
		if err := r.lease.Report(ctx, r.p); err != nil && ctx.Err() == nil {
			j.cfg.Logger.Warn("re-wrap: recording progress", slog.String("error", err.Error()))
		}
	}
	return moved, nil
}

// failed counts a row that cannot be moved. A KEK or store outage is not
// the row's fault: it ends the run, to be resumed.
func (j *RewrapJob) failed(ctx context.Context, r *rewrapRun, v *Vault, err error) error {
	if IsUnavailable(err) {
		return err
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	r.p.Failed++
	r.failed[v.UserID] = true
	if len(r.failures) < maxReportedFailures {
		r.failures = append(r.failures, RewrapFailure{UserID: v.UserID, KEKID: v.KEKID, Err: err})
	}
	j.cfg.Logger.LogAttrs(ctx, slog.LevelError, "re-wrap: row not moved",
		slog.String("user_id", v.UserID), slog.String("kek_id", v.KEKID),
		slog.Int("format_version", v.FormatVersion), slog.String("error", err.Error()))
	return nil
}

// tick refreshes the rate and publishes the progress.
func (j *RewrapJob) tick(r *rewrapRun) {
	r.p.UpdatedAt = j.cfg.Now()
	if secs := r.p.UpdatedAt.Sub(r.p.StartedAt).Seconds(); secs > 0 {
		r.p.RowsPerSecond = float64(r.p.Processed()) / secs
	}
	snapshot := r.p
	j.progress.Store(&snapshot)
	if j.cfg.Progress != nil {
		j.cfg.Progress(snapshot)
	}
}

// prepare decides what to do with one row and does the KEK work. It
// holds the plaintext master key only between unwrap and seal. format1 is
// the answer of the format-1 gate for this batch: a format-1 row fails
// with it.
func (j *RewrapJob) prepare(ctx context.Context, r *rewrapRun, v *Vault, kind passKind, format1 error) outcome {
	if v.ZeroKnowledge || v.WrappedMK == nil {
		return outcome{skip: true} // switched to zero-knowledge since listed
	}
	onActive := v.KEKID == r.active && v.FormatVersion == FormatBound
	switch {
	case kind == passSweep && !onActive:
		return outcome{skip: true}
	case kind == passSweep:
		return j.prepareServerRewrap(ctx, v, r.latest)
	case onActive:
		return outcome{skip: true} // rotated (or moved by another runner) since listed
	case kind == passLegacy && v.FormatVersion != FormatLegacy:
		return outcome{skip: true} // rotated since listed; a move pass takes it if it must
	case needsFormat1(v) && format1 != nil:
		return outcome{fail: format1}
	}
	mk, err := j.cfg.Keyring.open(ctx, v.UserID, v)
	if err != nil {
		return outcome{fail: err}
	}
	defer wipe(mk)
	if v.KeyCheck != nil && !keyCheckMatches(mk, *v.KeyCheck) {
		return outcome{fail: fmt.Errorf("%w: the unwrapped key does not match the row's key check value", ErrUnwrapFailed)}
	}
	if j.cfg.DryRun {
		return outcome{swap: &RewrapSwap{Old: v}}
	}
	wrapped, kekID, err := j.cfg.Keyring.seal(ctx, v.UserID, mk)
	if err != nil {
		return outcome{fail: err}
	}
	next := *v
	encodeBoundWrap(&next, wrapped, kekID)
	if next.KeyCheck == nil {
		kcv := KeyCheckValue(mk)
		next.KeyCheck = &kcv
	}
	note := fmt.Sprintf("%s/%d>%s/%d", v.KEKID, v.FormatVersion, kekID, FormatBound)
	return outcome{swap: j.swap(v, &next, note)}
}

// prepareServerRewrap moves a row of the active KEK to the newest version
// of the backend key, by the backend. The new wrap is unwrapped once and
// compared with the row's key check value before anyone stores it, as
// seal does for a fresh wrap.
func (j *RewrapJob) prepareServerRewrap(ctx context.Context, v *Vault, latest int) outcome {
	ring := j.cfg.Keyring
	versioned, err := ring.Lookup(v.KEKID)
	if err != nil {
		return outcome{fail: err}
	}
	versioner := versioned.(kek.Versioner)
	ciphertext, err := decodeStoredWrap(v)
	if err != nil {
		return outcome{fail: fmt.Errorf("%w: %w", ErrUnwrapFailed, err)}
	}
	made, err := versioner.KeyVersion(ciphertext)
	if err != nil {
		return outcome{fail: fmt.Errorf("%w: key version: %w", ErrUnwrapFailed, err)}
	}
	if made >= latest {
		return outcome{} // current: nothing to do, and not a candidate
	}
	if j.cfg.DryRun {
		return outcome{swap: &RewrapSwap{Old: v}, server: true}
	}
	binding := BindingContext(v.UserID, v.KEKID, FormatBound)
	rewrapper := versioned.(kek.Rewrapper)
	rewrapped, err := observed(ring, versioned, kek.OpRewrap, func() ([]byte, error) { return rewrapper.Rewrap(ctx, ciphertext, binding) })
	if err != nil {
		return outcome{fail: classifyKEKError(errors.New("server-side rewrap failed"), err)}
	}
	mk, err := ring.unwrap(ctx, versioned, rewrapped, binding)
	if err != nil {
		return outcome{fail: classifyKEKError(errors.New("server-side rewrap does not unwrap"), err)}
	}
	defer wipe(mk)
	next := *v
	encodeBoundWrap(&next, rewrapped, v.KEKID)
	if v.KeyCheck == nil {
		// Compare with the old wrap instead: one more decrypt, only on
		// rows without a check value.
		old, err := ring.open(ctx, v.UserID, v)
		if err != nil {
			return outcome{fail: err}
		}
		same := equalConstantTime(old, mk)
		wipe(old)
		if !same {
			return outcome{fail: errors.New("broker: server-side rewrap unwraps to a different key")}
		}
		kcv := KeyCheckValue(mk)
		next.KeyCheck = &kcv
	} else if !keyCheckMatches(mk, *v.KeyCheck) {
		return outcome{fail: errors.New("broker: server-side rewrap unwraps to a different key")}
	}
	newVersion, _ := versioner.KeyVersion(rewrapped)
	note := fmt.Sprintf("server-rewrap:%s/v%d>v%d", v.KEKID, made, newVersion)
	return outcome{swap: j.swap(v, &next, note), server: true}
}

func (j *RewrapJob) swap(old, next *Vault, note string) *RewrapSwap {
	e := &AuditEntry{
		ID:        newAuditID(),
		UserID:    old.UserID,
		Action:    ActionKEKRewrap,
		Context:   note,
		Status:    OutcomeOK.AuditStatus(),
		CreatedAt: j.cfg.Now(),
	}
	j.cfg.AuditSeal.stamp(e)
	return &RewrapSwap{Old: old, New: next, Audit: e}
}

// read returns the rows of ids.
func (j *RewrapJob) read(ctx context.Context, ids []string) ([]*Vault, error) {
	return j.store.RewrapRead(ctx, ids)
}

// apply writes the swaps in one transaction; a batch that fails for a
// reason other than an outage is retried one row at a time, so one bad
// row does not hold the others back.
func (j *RewrapJob) apply(ctx context.Context, swaps []RewrapSwap) ([]bool, error) {
	if len(swaps) == 0 {
		return nil, nil
	}
	// The rows are stamped as they are written, not when their KEK calls
	// ended: a batch of slow KMS calls must not commit its audit rows
	// later than AuditSettle after their time (docs/audit.md).
	now := j.cfg.Now()
	for i := range swaps {
		swaps[i].Audit.CreatedAt = now
		j.cfg.AuditSeal.stamp(swaps[i].Audit)
	}
	applied, err := j.store.RewrapApply(ctx, swaps)
	if err == nil || IsUnavailable(err) || ctx.Err() != nil || len(swaps) == 1 {
		return applied, err
	}
	j.cfg.Logger.Warn("re-wrap: batch failed, retrying row by row", slog.String("error", err.Error()))
	applied = make([]bool, len(swaps))
	for i := range swaps {
		one, err := j.store.RewrapApply(ctx, swaps[i:i+1])
		if err != nil {
			if IsUnavailable(err) || ctx.Err() != nil {
				return nil, err
			}
			// Leave the row as it is; the next pass retries it.
			j.cfg.Logger.Error("re-wrap: row not written", slog.String("user_id", swaps[i].Old.UserID), slog.String("error", err.Error()))
			continue
		}
		applied[i] = one[0]
	}
	return applied, nil
}

// sameWrap reports whether a and b hold the same server wrap: the columns
// a re-wrap compares before it swaps.
func sameWrap(a, b *Vault) bool {
	return equalPtr(a.WrappedMK, b.WrappedMK) && equalPtr(a.WrapIV, b.WrapIV) &&
		a.FormatVersion == b.FormatVersion && a.KEKID == b.KEKID && a.ZeroKnowledge == b.ZeroKnowledge
}

func equalPtr(a, b *string) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

// RetiredKEKError refuses a start-up whose keyring no longer has a KEK
// that rows are still wrapped by: those rows would not open.
type RetiredKEKError struct {
	// Rows maps each missing KEK id to the number of rows it wraps.
	Rows map[string]int64
}

func (e *RetiredKEKError) Error() string {
	msg := "rows are still wrapped by KEKs that are not configured:"
	for _, id := range slices.Sorted(maps.Keys(e.Rows)) {
		msg += fmt.Sprintf(" %q (%d rows)", id, e.Rows[id])
	}
	return msg
}

// CheckKeyringCoversRows returns a *RetiredKEKError when rows hold a
// server wrap under a KEK id the keyring cannot open — a KEK retired
// before the re-wrap job moved its rows. Zero-knowledge rows do not
// count: the server holds no wrap of theirs.
func CheckKeyringCoversRows(ctx context.Context, store RewrapStore, k *Keyring) error {
	counts, err := store.KEKCounts(ctx)
	if err != nil {
		return err
	}
	missing := map[string]int64{}
	for _, c := range counts {
		if !c.Wrapped {
			continue
		}
		if _, err := k.Lookup(c.KEKID); err != nil {
			missing[c.KEKID] += c.Rows
		}
	}
	if len(missing) > 0 {
		return &RetiredKEKError{Rows: missing}
	}
	return nil
}
