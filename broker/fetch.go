package broker

import (
	"cmp"
	"context"
	"crypto/sha256"
	"errors"
	"slices"
	"sync"
	"time"
)

// FetchCase is what a fetch's read found, which decides its audit row.
type FetchCase int

// The cases of a fetch, in the order of FetchBatch.Outcomes.
const (
	// FetchMissing: the user has no vault; recorded.
	FetchMissing FetchCase = iota
	// FetchZeroKnowledge: the vault is in zero-knowledge mode; recorded.
	FetchZeroKnowledge
	// FetchOpenable: the vault's kek_id is one of FetchBatch.Openable, a
	// KEK that unwraps without a network call; recorded as a fetch.
	FetchOpenable
	// FetchDeferred: anything else; nothing is recorded, the Service
	// records the outcome once the remote unwrap is done.
	FetchDeferred
)

// FetchOutcome is the action, status (an Outcome's AuditStatus) and
// context of an audit row.
type FetchOutcome struct {
	Action  Action
	Status  int
	Context string
}

// FetchBatch is the fetches of one VaultFetch call.
type FetchBatch struct {
	// Openable lists the KEK ids whose wraps unwrap locally.
	Openable []string
	// Outcomes is the audit row of each recorded case, by FetchCase.
	Outcomes [FetchDeferred]FetchOutcome
	Fetches  []*Fetch
}

// Case is the case of a fetch that read v (nil: no vault). A store
// implements the same rule in its own terms.
func (b *FetchBatch) Case(v *Vault) FetchCase {
	switch {
	case v == nil:
		return FetchMissing
	case v.ZeroKnowledge:
		return FetchZeroKnowledge
	case slices.Contains(b.Openable, v.KEKID):
		return FetchOpenable
	}
	return FetchDeferred
}

// Fetch is one user's read. Audit.UserID is the user; Audit carries the
// row's id, request metadata and time, while its action, status and
// context come from the batch's Outcomes by the case of what is read.
type Fetch struct {
	Audit *AuditEntry
	// Vault is set by VaultFetch: the user's vault, nil when there is none.
	Vault *Vault
	// MACs are the audit row's MACs by FetchCase, each over Audit with
	// that case's outcome: the store writes the one of the case it
	// finds. nil when the audit key is not loaded.
	MACs [FetchDeferred][]byte

	kase     FetchCase
	macBytes [FetchDeferred][sha256.Size]byte // what MACs hold (stampFetch)
	audit    AuditEntry                       // what Audit points to (fetchKey)
}

// fetchOutcomes are the rows a fetch records in its read's commit.
var fetchOutcomes = [FetchDeferred]FetchOutcome{
	FetchMissing:       {ActionFailedFetch, OutcomeNotFound.AuditStatus(), "not-initialised"},
	FetchZeroKnowledge: {ActionFetch, OutcomeOK.AuditStatus(), "zk-recovery-blob"},
	FetchOpenable:      {ActionFetch, OutcomeOK.AuditStatus(), ""},
}

// maxGroupCommit bounds one group commit.
const maxGroupCommit = 256

// groupCommitTimeout bounds one group commit; requests give up sooner, on
// their own deadline.
const groupCommitTimeout = 30 * time.Second

// groupCommit is the group commit of the fetch path: a request hands its
// item over and waits until the commit that carries it is durable. While
// a commit is in flight, items of concurrent requests queue and go in the
// next one, so under load one round trip and one fsync serve many
// requests, and an idle server commits a lone item at once.
type groupCommit[T any] struct {
	kind    GroupCommitKind
	run     func(ctx context.Context, items []T) error
	observe func(GroupCommit) // may be nil
	slots   chan struct{}     // bounds concurrent commits

	// shed refuses items that could not be committed before their
	// request's deadline, or past maxPending (overload.go).
	shed bool

	mu      sync.Mutex
	pending []pendingItem[T]
	took    time.Duration // moving average of a store call's time
}

type pendingItem[T any] struct {
	item T
	done chan error
}

// doneChans recycles the channels a commit answers its items on: one
// goes back only once its one answer has been received.
var doneChans = sync.Pool{New: func() any { return make(chan error, 1) }}

// GroupCommitKind names what a group commit carries.
type GroupCommitKind string

// The group commits of the fetch path.
const (
	// GroupCommitFetch: reads with their audit rows (VaultFetcher).
	GroupCommitFetch GroupCommitKind = "fetch"
	// GroupCommitAudit: audit rows alone (AuditAppender), after a
	// VaultRead and for outcomes known after the read.
	GroupCommitAudit GroupCommitKind = "audit"
)

// GroupCommit describes one store call of a group commit, for
// Config.OnGroupCommit.
type GroupCommit struct {
	Kind  GroupCommitKind
	Items int           // requests it carried
	Took  time.Duration // from the start of the store call to its end
	Err   error
	// Retry marks a call that re-runs part of a group commit after a
	// request failed the previous call: a split. A request that fails
	// alone costs one retry of the others, never a call per request.
	Retry bool
}

func newGroupCommit[T any](kind GroupCommitKind, concurrency int, observe func(GroupCommit), run func(ctx context.Context, items []T) error) *groupCommit[T] {
	if concurrency < 1 {
		concurrency = 1
	}
	return &groupCommit[T]{kind: kind, run: run, observe: observe, slots: make(chan struct{}, concurrency)}
}

// do queues item and waits until it is durable or ctx ends. When ctx
// ends first the item may still be committed; the caller treats the
// request as failed either way, which errs on the side of more audit,
// never less.
func (b *groupCommit[T]) do(ctx context.Context, item T) error {
	b.mu.Lock()
	if b.shed {
		if err := b.admit(ctx, len(b.pending)); err != nil {
			b.mu.Unlock()
			return err
		}
	}
	p := pendingItem[T]{item: item, done: doneChans.Get().(chan error)}
	b.pending = append(b.pending, p)
	b.mu.Unlock()
	b.flush(ctx)
	select {
	case err := <-p.done:
		doneChans.Put(p.done) // drained, and its commit sends nothing more
		if err != nil && (ctx.Err() != nil || pastDeadline(ctx)) {
			// A commit that failed as this request ended, or that its
			// deadline cut short (see commitContext; that timer may go
			// off just before ctx's): the same as giving up waiting.
			return &UnavailableError{Dependency: DependencyStore, Err: cmp.Or(ctx.Err(), context.DeadlineExceeded)}
		}
		return err
	case <-ctx.Done():
		return &UnavailableError{Dependency: DependencyStore, Err: ctx.Err()}
	}
}

// flush starts commits while there are items queued and commit slots
// free. A commit that finishes calls flush again, so nothing is left
// behind. Called by a request (caller is its context; nil otherwise), the
// first commit flush starts runs on the request's own goroutine: on a
// server with a slot free, a fetch is then committed and answered without
// being handed to another goroutine and back, two wake-ups that cost a
// lone fetch more than its commit's CPU.
func (b *groupCommit[T]) flush(caller context.Context) {
	for {
		select {
		case b.slots <- struct{}{}:
		default:
			return // every slot is committing; the next to finish picks the items up
		}
		b.mu.Lock()
		n := min(len(b.pending), maxGroupCommit)
		batch := b.pending[:n:n]
		b.pending = b.pending[n:]
		b.mu.Unlock()
		if n == 0 {
			<-b.slots
			// An item queued after the look above found the slot taken
			// and left it to this flush: look again now that it is free.
			b.mu.Lock()
			queued := len(b.pending) > 0
			b.mu.Unlock()
			if !queued {
				return
			}
			continue
		}
		if caller != nil {
			b.commit(caller, batch)
			return
		}
		go b.commit(nil, batch)
	}
}

// commit runs batch and hands each of its items its outcome; caller is
// the context of the request whose goroutine runs it, nil on a goroutine
// of its own.
func (b *groupCommit[T]) commit(caller context.Context, batch []pendingItem[T]) {
	items := make([]T, len(batch))
	for i, p := range batch {
		items[i] = p.item
	}
	ctx, cancel := commitContext(caller)
	errs := make([]error, len(items))
	b.runSplitting(ctx, items, nil, errs, false)
	cancel()
	for i, p := range batch {
		p.done <- errs[i]
	}
	<-b.slots
	b.flush(nil)
}

// runSplitting runs the items of items at positions idx as one store
// call and sets errs at those positions. An item that fails the call
// alone (the store names it with a *BatchItemError) gets its own error,
// and the rest run again as one call: k such items cost at most k+1
// calls, never one per item, and every other item is committed once.
// When the call fails and the store cannot say which item is to blame
// (and it is no outage, which fails them all), the items are halved and
// each half runs on the same rule, so the one at fault still fails
// alone. retry marks calls that re-run part of the batch. A nil idx is
// every item (the first call of a commit: nothing to copy).
func (b *groupCommit[T]) runSplitting(ctx context.Context, items []T, idx []int, errs []error, retry bool) {
	for idx == nil || len(idx) > 0 {
		part := items
		if idx != nil {
			part = make([]T, len(idx))
			for j, i := range idx {
				part[j] = items[i]
			}
		}
		start := time.Now()
		err := b.run(ctx, part)
		took := time.Since(start)
		b.observeTook(took)
		if b.observe != nil {
			b.observe(GroupCommit{Kind: b.kind, Items: len(part), Took: took, Err: err, Retry: retry})
		}
		if err == nil {
			return
		}
		if idx == nil {
			idx = indexes(len(items))
		}
		retry = true
		var one *BatchItemError
		switch {
		case IsUnavailable(err) || ctx.Err() != nil:
			// An outage, or the commit's time is up: nothing is
			// anyone's fault, and nothing would succeed now.
			for _, i := range idx {
				errs[i] = err
			}
			return
		case errors.As(err, &one) && one.Index >= 0 && one.Index < len(idx):
			errs[idx[one.Index]] = one.Err
			idx = slices.Delete(slices.Clone(idx), one.Index, one.Index+1)
		case len(idx) == 1:
			errs[idx[0]] = err
			return
		default:
			half := len(idx) / 2
			b.runSplitting(ctx, items, idx[:half:half], errs, true)
			idx = idx[half:]
		}
	}
}

// indexes returns 0, 1, …, n-1.
func indexes(n int) []int {
	idx := make([]int, n)
	for i := range idx {
		idx[i] = i
	}
	return idx
}

// pastDeadline reports whether ctx has a deadline and it has passed.
func pastDeadline(ctx context.Context) bool {
	d, ok := ctx.Deadline()
	return ok && !time.Now().Before(d)
}

// commitContext is the context of one commit. A commit runs on a context
// of its own, so that a waiter giving up (a client that went away) does
// not abort the items of the others, bounded by groupCommitTimeout, so
// that a store that stops answering (a partition without a reset) frees
// the commit slot instead of holding it until TCP gives up. A commit run
// on a request's goroutine also ends at that request's deadline, which is
// when the request would have stopped waiting for it: requests share one
// timeout (vaultapi.Config.RequestTimeout), so the items queued before it
// are due no later.
func commitContext(caller context.Context) (context.Context, context.CancelFunc) {
	parent, deadline := context.Background(), time.Now().Add(groupCommitTimeout)
	if caller != nil {
		parent = context.WithoutCancel(caller)
		if d, ok := caller.Deadline(); ok && d.Before(deadline) {
			deadline = d
		}
	}
	return context.WithDeadline(parent, deadline)
}

// fetchGroup runs fetches as one VaultFetch. A fetch that fails it
// alone is split off by the group commit (runSplitting), and the others
// run again without it.
func (s *Service) fetchGroup(ctx context.Context, fetches []*Fetch) error {
	b := &FetchBatch{Openable: s.keyring.localIDs(), Outcomes: fetchOutcomes, Fetches: fetches}
	if err := s.fetcher.VaultFetch(ctx, b); err != nil {
		return err
	}
	for _, f := range fetches {
		f.kase = b.Case(f.Vault)
	}
	return nil
}

// fetchKey is Key over a VaultFetcher: one round trip, shared with
// concurrent fetches, reads the vault and records the fetch.
func (s *Service) fetchKey(ctx context.Context, userID string, meta RequestMeta) (*KeyResult, error) {
	// One allocation for the fetch, its audit entry and its MACs. The
	// entry has no MAC of its own: its action is not known yet, MACs has
	// one per case.
	f := &Fetch{}
	f.audit = newAuditEntry(s.now(), userID, meta, "", 0, "")
	f.Audit = &f.audit
	s.auditSeal.stampFetch(f, &fetchOutcomes)
	if err := s.fetches.do(ctx, f); err != nil {
		return nil, err
	}
	v := f.Vault
	switch f.kase {
	case FetchMissing:
		return nil, ErrNotFound
	case FetchZeroKnowledge:
		return zkResult(v), nil
	case FetchOpenable:
		mk, opened, err := s.openLatest(ctx, userID, v, nil)
		if err != nil {
			// Recorded as a fetch, yet the key stays here: the wrap does
			// not authenticate (tampered with, or corrupt), or is a
			// format-1 wrap once format 1 is closed. The audit
			// trail is append-only, so the failure is recorded after the
			// fetch row and names it.
			return nil, s.unwrapFailed(ctx, userID, meta, v, err, f.Audit.ID)
		}
		return &KeyResult{MasterKey: mk, FormatVersion: opened.FormatVersion, KEKID: opened.KEKID}, nil
	}
	return s.openRecorded(ctx, userID, meta, v)
}

// fastKey is Key without a VaultFetcher: one read round trip
// (VaultRead), and an audit commit shared with concurrent fetches.
func (s *Service) fastKey(ctx context.Context, userID string, meta RequestMeta) (*KeyResult, error) {
	v, err := s.store.VaultRead(ctx, userID)
	if errors.Is(err, ErrNotFound) {
		if err := s.record(ctx, userID, meta, fetchOutcomes[FetchMissing]); err != nil {
			return nil, err
		}
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	if v.ZeroKnowledge {
		if err := s.record(ctx, userID, meta, fetchOutcomes[FetchZeroKnowledge]); err != nil {
			return nil, err
		}
		return zkResult(v), nil
	}
	return s.openRecorded(ctx, userID, meta, v)
}

// openRecorded unwraps v's master key and then records the outcome.
func (s *Service) openRecorded(ctx context.Context, userID string, meta RequestMeta, v *Vault) (*KeyResult, error) {
	mk, opened, err := s.openLatest(ctx, userID, v, nil)
	if err != nil {
		return nil, s.unwrapFailed(ctx, userID, meta, v, err, "")
	}
	if err := s.record(ctx, userID, meta, fetchOutcomes[FetchOpenable]); err != nil {
		wipe(mk)
		return nil, err
	}
	return &KeyResult{MasterKey: mk, FormatVersion: opened.FormatVersion, KEKID: opened.KEKID}, nil
}

// record appends the audit row of outcome o through the audit group
// commit.
func (s *Service) record(ctx context.Context, userID string, meta RequestMeta, o FetchOutcome) error {
	return s.audits.do(ctx, s.auditEntry(userID, meta, o.Action, o.Status, o.Context))
}

// unwrapFailed logs and records a failed unwrap and returns err, or the
// error of recording it. voids, when set, is the id of the fetch row the
// read's commit wrote, which the failure row names.
func (s *Service) unwrapFailed(ctx context.Context, userID string, meta RequestMeta, v *Vault, err error, voids string) error {
	outcome, note := unwrapFailureAudit(err, v)
	s.logUnwrapFailure(ctx, userID, v, err)
	if voids != "" {
		note += ";voids:" + voids
	}
	if rerr := s.record(ctx, userID, meta, FetchOutcome{ActionFailedFetch, outcome.AuditStatus(), note}); rerr != nil {
		return rerr
	}
	return err
}
