package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/keybroker/keybroker/kek"
)

// How the re-wrap job prepares, checks and writes one batch of rows.

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
	now := j.cfg.Now()
	e := &AuditEntry{
		ID:        newAuditID(now),
		UserID:    old.UserID,
		Action:    ActionKEKRewrap,
		Context:   note,
		Status:    OutcomeOK.AuditStatus(),
		CreatedAt: now,
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
