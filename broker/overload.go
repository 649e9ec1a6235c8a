package broker

import (
	"context"
	"errors"
	"time"
)

// ErrOverloaded is the cause of the *UnavailableError of a fetch the
// server refused at once, instead of queueing it, because it would not
// have been committed before its deadline or the queue was full: the
// client hears 503 with Retry-After now rather than after waiting out its
// deadline, and the server's memory for queued requests stays bounded.
var ErrOverloaded = errors.New("overloaded: the request would not be committed before its deadline")

// maxPending bounds the items queued for the next commits of a group
// commit: 16 full commits. A request past it is refused at once.
const maxPending = 16 * maxGroupCommit

// admit decides, with b.mu held and queued items ahead, whether an item
// whose request ends at ctx's deadline may queue. The wait is estimated
// from the commits' recent store time: the commit in flight, the full
// commits ahead of the item (spread over the commit slots), and its own.
func (b *groupCommit[T]) admit(ctx context.Context, queued int) error {
	if queued >= maxPending {
		return &UnavailableError{Dependency: DependencyStore, Err: ErrOverloaded}
	}
	deadline, ok := ctx.Deadline()
	if !ok || b.took == 0 || queued == 0 {
		// With nothing queued the item goes in the next commit: it is
		// admitted whatever the estimate, so that commits keep running
		// and keep the estimate current (refusing everything after one
		// slow commit would leave it stale for good).
		return nil
	}
	commits := 2 + queued/(maxGroupCommit*cap(b.slots))
	if time.Until(deadline) < time.Duration(commits)*b.took {
		return &UnavailableError{Dependency: DependencyStore, Err: ErrOverloaded}
	}
	return nil
}

// observeTook folds one store call's time into b.took, the moving
// average admit reads (weight 1/8: a few commits follow a change).
func (b *groupCommit[T]) observeTook(d time.Duration) {
	b.mu.Lock()
	if b.took == 0 {
		b.took = d
	} else {
		b.took += (d - b.took) / 8
	}
	b.mu.Unlock()
}
