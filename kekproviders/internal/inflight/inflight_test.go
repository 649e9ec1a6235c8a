package inflight

import (
	"context"
	"errors"
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
			for {
				p := peak.Load()
				if n <= p || peak.CompareAndSwap(p, n) {
					break
				}
			}
			time.Sleep(time.Millisecond)
			now.Add(-1)
		})
	}
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
	start := time.Now()
	_, err = l.Acquire(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want context.DeadlineExceeded", err)
	}
	if waited := time.Since(start); waited > 2*time.Second {
		t.Fatalf("waited %s past a 20ms deadline", waited)
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
