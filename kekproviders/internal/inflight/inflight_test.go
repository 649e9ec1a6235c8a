package inflight

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestNeverMoreThanTheBoundInFlight(t *testing.T) {
	t.Parallel()
	const bound, callers = 3, 40
	l := New(bound)
	if l.Cap() != bound {
		t.Fatalf("Cap() = %d, want %d", l.Cap(), bound)
	}
	var now, peak atomic.Int32
	entered, leave := make(chan struct{}, callers), make(chan struct{})
	var wg sync.WaitGroup
	for range callers {
		wg.Go(func() {
			release, err := l.Acquire(t.Context())
			if err != nil {
				t.Error(err)
				return
			}
			defer release()
			n := now.Add(1)
			for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
			}
			entered <- struct{}{}
			<-leave
			now.Add(-1)
		})
	}
	// The first bound callers hold their slots until told to leave.
	for range bound {
		<-entered
	}
	if got := now.Load(); got != bound {
		t.Fatalf("%d callers hold a slot, want %d", got, bound)
	}
	close(leave)
	wg.Wait()
	if got := peak.Load(); got != bound {
		t.Fatalf("peak in flight = %d, want exactly %d", got, bound)
	}
}

func TestAWaiterGivesUpAtItsDeadline(t *testing.T) {
	t.Parallel()
	l := New(1)
	release, err := l.Acquire(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
	defer cancel()
	// The slot is held until release below: Acquire returning at all
	// means it gave up at its deadline.
	_, err = l.Acquire(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want context.DeadlineExceeded", err)
	}
	release()
	// The slot is free again: a new caller gets it at once.
	r2, err := l.Acquire(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	r2()
}

func TestZeroMeansDefault(t *testing.T) {
	t.Parallel()
	if got := New(0).Cap(); got != Default {
		t.Fatalf("New(0).Cap() = %d, want %d", got, Default)
	}
}

func TestDoRunsTheCallOffTheCallersGoroutineAndReraisesItsPanic(t *testing.T) {
	t.Parallel()
	l := New(2)
	ran := false
	if err := l.Do(t.Context(), func() { ran = true }); err != nil || !ran {
		t.Fatalf("Do: err %v, ran %v", err, ran)
	}
	func() {
		defer func() {
			if r := recover(); r != "boom" {
				t.Fatalf("recovered %v, want boom", r)
			}
		}()
		_ = l.Do(t.Context(), func() { panic("boom") })
	}()
	// Both slots are free again after a call and a panic.
	for range 2 {
		if _, err := l.Acquire(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := l.Do(ctx, func() { t.Error("ran without a slot") }); !errors.Is(err, context.Canceled) {
		t.Fatalf("Do with every slot taken and ctx done: %v", err)
	}
}

// pipeDial dials an in-memory connection and counts the dials that got
// past the cap.
func pipeDial(dialled *atomic.Int32) DialFunc {
	return func(context.Context, string, string) (net.Conn, error) {
		dialled.Add(1)
		client, server := net.Pipe()
		server.Close()
		return client, nil
	}
}

func TestConnCapHoldsADialUntilAConnectionCloses(t *testing.T) {
	t.Parallel()
	var dialled atomic.Int32
	dial := NewConnCap(2).Dial(pipeDial(&dialled))
	done, cancel := context.WithCancel(t.Context())
	cancel()

	a, err := dial(t.Context(), "tcp", "kms:443")
	if err != nil {
		t.Fatal(err)
	}
	b, err := dial(t.Context(), "tcp", "kms:443")
	if err != nil {
		t.Fatal(err)
	}
	// Both slots are taken: a third dial waits, here until its context
	// (already done) ends, and never reaches the network.
	if _, err := dial(done, "tcp", "kms:443"); !errors.Is(err, context.Canceled) {
		t.Fatalf("third dial with both connections open: %v, want context.Canceled", err)
	}
	if got := dialled.Load(); got != 2 {
		t.Fatalf("%d dials reached the network, want 2", got)
	}
	// Closing one twice frees one slot, not two.
	a.Close()
	a.Close()
	c, err := dial(t.Context(), "tcp", "kms:443")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := dial(done, "tcp", "kms:443"); !errors.Is(err, context.Canceled) {
		t.Fatalf("dial after a double close: %v, want context.Canceled", err)
	}
	b.Close()
	c.Close()
}

func TestConnCapFreesTheSlotOfAFailedDial(t *testing.T) {
	t.Parallel()
	refused := errors.New("connection refused")
	dial := NewConnCap(1).Dial(func(context.Context, string, string) (net.Conn, error) { return nil, refused })
	for range 3 {
		if _, err := dial(t.Context(), "tcp", "kms:443"); !errors.Is(err, refused) {
			t.Fatalf("dial: %v, want the dialler's own error", err)
		}
	}
}
