package broker

import (
	"context"
	"runtime"
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
