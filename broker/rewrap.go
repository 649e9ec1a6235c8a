package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
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
