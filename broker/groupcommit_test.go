package broker

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestGroupCommitLeavesNoItemBehind: every item handed over is committed
// without waiting for a later one, whatever the interleaving of requests
// and finishing commits. The race it guards: a flush holds the only slot,
// finds the queue empty, and before it frees the slot a request queues an
// item, finds the slot taken and leaves the item to that flush. The
// window is a few instructions wide (a goroutine preempted there widens
// it; with runtime.Gosched put there, this test fails at once without the
// second look in flush). Each request gives up after a bound a lost item
// would exceed, and a store that commits instantly makes the windows
// between a commit's end and the next round's requests as tight as they
// get.
func TestGroupCommitLeavesNoItemBehind(t *testing.T) {
	var committed atomic.Int64
	var observed atomic.Int64
	b := newGroupCommit(GroupCommitFetch, 1, func(c GroupCommit) { observed.Add(int64(c.Items)) }, func(_ context.Context, items []int) error {
		committed.Add(int64(len(items)))
		runtime.Gosched()
		return nil
	})
	// Rounds of concurrent requests with nothing in between: an item left
	// queued at the end of a round has no later request to take it along.
	const rounds, workers = 3000, 4
	var lost atomic.Int64
	for r := range rounds {
		var wg sync.WaitGroup
		for w := range workers {
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
				defer cancel()
				if err := b.do(ctx, r*workers+w); err != nil {
					lost.Add(1)
				}
			})
		}
		wg.Wait()
		if lost.Load() > 0 {
			break
		}
	}
	require.Zero(t, lost.Load(), "items waited for a later request to be committed")
	require.EqualValues(t, rounds*workers, committed.Load())
	require.EqualValues(t, rounds*workers, observed.Load(), "every commit is observed with its size")
}

// TestLoneCommitRunsOnItsRequest: on an idle group commit a request's
// item is committed on the request's own goroutine, so the commit ends at
// the request's deadline: a store that hangs holds the request no longer
// than it would have waited, and frees the slot for the next one.
func TestLoneCommitRunsOnItsRequest(t *testing.T) {
	var hang atomic.Bool
	hang.Store(true)
	deadlines := make(chan time.Time, 2)
	b := newGroupCommit(GroupCommitFetch, 1, nil, func(ctx context.Context, _ []int) error {
		d, _ := ctx.Deadline()
		deadlines <- d
		if hang.Load() {
			<-ctx.Done()
			return ctx.Err()
		}
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	want, _ := ctx.Deadline()
	returned := make(chan error, 1)
	go func() { returned <- b.do(ctx, 1) }()
	select {
	case err := <-returned:
		var unavailable *UnavailableError
		require.ErrorAs(t, err, &unavailable, "a request whose deadline passes in the store is a store outage")
	case <-time.After(groupCommitTimeout / 2):
		t.Fatal("the request outlived its deadline: the commit was not bound to it")
	}
	require.Equal(t, want, <-deadlines, "the lone commit ran under the request's deadline")

	hang.Store(false)
	require.NoError(t, b.do(context.Background(), 2), "the slot was freed")
	d := <-deadlines
	require.WithinDuration(t, time.Now().Add(groupCommitTimeout), d, groupCommitTimeout/2,
		"without a deadline of its own the request's commit is bounded by groupCommitTimeout")
}

// TestCommitOutlivesAClientThatLeft: a request whose client goes away
// while its commit runs does not abort that commit (other requests' items
// may ride on it, and its audit row is on its way to disk).
func TestCommitOutlivesAClientThatLeft(t *testing.T) {
	entered, release := make(chan struct{}), make(chan struct{})
	aborted := make(chan error, 1)
	b := newGroupCommit(GroupCommitFetch, 1, nil, func(ctx context.Context, _ []int) error {
		close(entered)
		<-release
		aborted <- ctx.Err()
		return nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	returned := make(chan error, 1)
	go func() { returned <- b.do(ctx, 1) }()
	<-entered
	cancel()
	close(release)
	require.NoError(t, <-aborted, "the commit's context was not cancelled with the request's")
	<-returned
}

// poisonStore is a store call over ints that fails while the batch holds
// a negative item: with a *BatchItemError naming the first one when
// named is set, else with a plain error. It records every call and how
// often each item was committed.
type poisonStore struct {
	named     bool
	calls     [][]int
	committed map[int]int
}

func (p *poisonStore) run(_ context.Context, items []int) error {
	p.calls = append(p.calls, slices.Clone(items))
	for i, item := range items {
		if item < 0 {
			err := fmt.Errorf("poison %d", item)
			if p.named {
				return &BatchItemError{Index: i, Err: err}
			}
			return err
		}
	}
	for _, item := range items {
		p.committed[item]++
	}
	return nil
}

// TestGroupCommitSplitsAroundAFailingItem: an item the store names as the
// one that failed the call fails alone with its own error; the others run
// again as one call, so k such items cost k+1 calls (never one per item),
// every other item is committed exactly once, and the observer marks each
// re-run.
func TestGroupCommitSplitsAroundAFailingItem(t *testing.T) {
	store := &poisonStore{named: true, committed: map[int]int{}}
	var observed []GroupCommit
	b := newGroupCommit(GroupCommitFetch, 1, func(c GroupCommit) { observed = append(observed, c) }, store.run)
	items := []int{1, -1, 2, 3, -2, 4, 5}
	errs := make([]error, len(items))
	b.runSplitting(context.Background(), items, indexes(len(items)), errs, false)

	require.Equal(t, [][]int{{1, -1, 2, 3, -2, 4, 5}, {1, 2, 3, -2, 4, 5}, {1, 2, 3, 4, 5}}, store.calls)
	require.Equal(t, map[int]int{1: 1, 2: 1, 3: 1, 4: 1, 5: 1}, store.committed)
	for i, item := range items {
		if item < 0 {
			require.EqualError(t, errs[i], fmt.Sprintf("poison %d", item), "the item's own error, not the batch's")
		} else {
			require.NoError(t, errs[i])
		}
	}
	require.Len(t, observed, 3)
	for i, c := range observed {
		require.Equal(t, i > 0, c.Retry, "call %d", i)
		require.Equal(t, len(store.calls[i]), c.Items)
	}
}

// TestGroupCommitHalvesWhenTheStoreCannotSay: a call that fails with no
// item named (and no outage) is halved until the item at fault is alone;
// the others are still committed exactly once, in far fewer calls than
// one per item.
func TestGroupCommitHalvesWhenTheStoreCannotSay(t *testing.T) {
	store := &poisonStore{committed: map[int]int{}}
	b := newGroupCommit(GroupCommitFetch, 1, nil, store.run)
	items := make([]int, 64)
	for i := range items {
		items[i] = i
	}
	items[37] = -1
	errs := make([]error, len(items))
	b.runSplitting(context.Background(), items, indexes(len(items)), errs, false)
	for i, item := range items {
		if item < 0 {
			require.EqualError(t, errs[i], "poison -1")
			continue
		}
		require.NoError(t, errs[i])
		require.Equal(t, 1, store.committed[item], "item %d committed once", item)
	}
	require.LessOrEqual(t, len(store.calls), 1+2*6, "log2(64) halvings, two calls each")
}

// TestGroupCommitOutageFailsEveryItem: an outage is nobody's fault: every
// item gets it after one call, with no retry.
func TestGroupCommitOutageFailsEveryItem(t *testing.T) {
	calls := 0
	outage := &UnavailableError{Dependency: DependencyStore, Err: errors.New("connection refused")}
	b := newGroupCommit(GroupCommitFetch, 1, nil, func(context.Context, []int) error {
		calls++
		return &BatchItemError{Index: 0, Err: outage}
	})
	errs := make([]error, 5)
	b.runSplitting(context.Background(), []int{1, 2, 3, 4, 5}, indexes(5), errs, false)
	require.Equal(t, 1, calls)
	for _, err := range errs {
		require.True(t, IsUnavailable(err))
	}
}

// TestOverloadedFetchIsRefusedAtOnce: past saturation a fetch that could
// not be committed before its deadline, or that finds the queue full, is
// answered at once with an outage (503 with Retry-After) and never
// reaches the store, instead of waiting out its deadline; one that has
// the time queues as before.
func TestOverloadedFetchIsRefusedAtOnce(t *testing.T) {
	var calls atomic.Int64
	b := newGroupCommit(GroupCommitFetch, 1, nil, func(context.Context, []int) error {
		calls.Add(1)
		return nil
	})
	b.shed = true
	b.took = time.Hour                        // the store's recent commits took an hour each
	b.pending = []pendingItem[int]{{item: 0}} // and one fetch is queued ahead

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err := b.do(ctx, 1)
	require.ErrorIs(t, err, ErrOverloaded)
	require.True(t, IsUnavailable(err), "an outage: the API answers 503 with Retry-After")
	require.Zero(t, calls.Load(), "a refused fetch never reaches the store")
	require.Len(t, b.pending, 1, "nor stays queued")
	b.pending = nil

	// With nothing queued ahead a fetch goes in the next commit whatever
	// the estimate, so that one slow commit cannot lock fetches out.
	require.NoError(t, b.do(ctx, 2))
	require.EqualValues(t, 1, calls.Load())
	require.Less(t, b.took, time.Hour, "each commit's time moves the estimate")

	// Without a deadline there is nothing to miss.
	b.took = time.Hour
	b.pending = []pendingItem[int]{{item: 0, done: make(chan error, 1)}}
	require.NoError(t, b.do(context.Background(), 3))
	require.EqualValues(t, 2, calls.Load())

	// Commits that keep their time admit a request with time to wait.
	b.took = time.Millisecond
	require.NoError(t, b.do(ctx, 3))

	// A full queue refuses even a request with all the time in the world.
	b.mu.Lock()
	b.pending = make([]pendingItem[int], maxPending)
	b.mu.Unlock()
	require.ErrorIs(t, b.admit(context.Background(), maxPending), ErrOverloaded)
	b.mu.Lock()
	b.pending = nil
	b.mu.Unlock()

	// The audit commit does not shed: its items follow an unwrap.
	audits := newGroupCommit(GroupCommitAudit, 1, nil, func(context.Context, []int) error { return nil })
	audits.took = time.Hour
	require.NoError(t, audits.do(ctx, 1))
}
