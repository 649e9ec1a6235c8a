// Package inflight bounds the number of calls a remote KEK has in flight
// against its KMS at once. A KMS is the slow part of a fetch in direct
// mode (cache=off) and has request quotas; without a bound, every waiting
// HTTP request holds an SDK call (its request, signature, buffers and a
// connection of its own) while the KMS works through the queue, so a
// login storm grows the server's memory with the number of clients. With
// the bound, callers beyond it wait here, cheaply, for their context.
package inflight

import (
	"context"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
)

// Default is the bound when a URI does not set max_inflight: enough to
// keep a KMS answering in a few milliseconds busy at thousands of calls
// per second per replica, well under its per-second quotas at typical
// latencies.
const Default = 32

// Limiter admits at most a fixed number of calls at once. The zero value
// is not usable; make one with New.
type Limiter struct {
	slots   chan struct{}
	waiting atomic.Int32
}

// New returns a Limiter for n calls at once; n <= 0 means Default.
func New(n int) *Limiter {
	if n <= 0 {
		n = Default
	}
	return &Limiter{slots: make(chan struct{}, n)}
}

// Cap returns the bound.
func (l *Limiter) Cap() int { return cap(l.slots) }

// Acquire waits for a slot until ctx is done. On success the caller must
// call the returned release exactly once. The error, when ctx ends first,
// wraps ctx's error (errors.Is finds context.DeadlineExceeded or
// context.Canceled) and says how many calls were in flight.
func (l *Limiter) Acquire(ctx context.Context) (release func(), err error) {
	select {
	case l.slots <- struct{}{}:
		return l.release, nil
	default:
	}
	l.waiting.Add(1)
	defer l.waiting.Add(-1)
	select {
	case l.slots <- struct{}{}:
		return l.release, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("waited for one of %d KMS call slots, all busy: %w", cap(l.slots), ctx.Err())
	}
}

func (l *Limiter) release() { <-l.slots }

// Waiting returns how many callers are waiting for a slot now.
func (l *Limiter) Waiting() int { return int(l.waiting.Load()) }

// Do runs call in a slot, on a goroutine of its own, and returns when it
// has returned; the error is Acquire's when ctx ends before a slot frees
// (call then never runs). call must return soon after ctx is done.
//
// The goroutine is the point: an SDK call runs deep (middleware stacks,
// signing, retries) and grows the stack it runs on to tens of KiB, and Go
// keeps a grown stack with its goroutine. Run on the caller's goroutine —
// an HTTP connection's, long-lived — every client connection would keep
// such a stack; here only the calls in flight do. A panic in call is
// re-raised on the caller's goroutine.
func (l *Limiter) Do(ctx context.Context, call func()) error {
	release, err := l.Acquire(ctx)
	if err != nil {
		return err
	}
	var panicked any
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer release()
		defer func() { panicked = recover() }()
		call()
	}()
	<-done
	if panicked != nil {
		panic(panicked)
	}
	return nil
}

// ConnCap bounds the network connections a transport holds open at once.
// http.Transport's MaxConnsPerHost alone does not: it stops counting a
// connection before it closes it, and a connection it drops (a request's
// context ending while the response is being returned, say) is replaced
// by a new dial at once, so for a moment one more than the bound is open.
// ConnCap counts a connection from the start of its dial until its Close
// has returned. The zero value is not usable; make one with NewConnCap.
type ConnCap struct {
	slots chan struct{}
}

// NewConnCap returns a ConnCap for n connections at once; n <= 0 means
// Default.
func NewConnCap(n int) *ConnCap {
	if n <= 0 {
		n = Default
	}
	return &ConnCap{slots: make(chan struct{}, n)}
}

// DialFunc is the signature of net.Dialer.DialContext and
// http.Transport.DialContext.
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// Dial wraps dial: each connection takes a slot before it is dialled,
// waiting for one until ctx is done, and gives it back when it is closed
// (or when the dial fails).
func (c *ConnCap) Dial(dial DialFunc) DialFunc {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		select {
		case c.slots <- struct{}{}:
		case <-ctx.Done():
			return nil, fmt.Errorf("waited for one of %d KMS connections, all open: %w", cap(c.slots), ctx.Err())
		}
		conn, err := dial(ctx, network, addr)
		if err != nil {
			<-c.slots
			return nil, err
		}
		return &cappedConn{Conn: conn, release: func() { <-c.slots }}, nil
	}
}

// cappedConn gives its slot back once, after the first Close returns.
type cappedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *cappedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
