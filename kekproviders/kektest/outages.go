package kektest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/kek"
)

func testCancelled(t *testing.T, s Subject) {
	wrapped, err := s.KEK.Wrap(Context(t, opTimeout), randomBytes(32), nil)
	require.NoError(t, err)

	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	start := time.Now()
	_, err = s.KEK.Wrap(ctx, randomBytes(32), nil)
	require.ErrorIs(t, err, context.Canceled)
	_, err = s.KEK.Unwrap(ctx, wrapped, nil)
	require.ErrorIs(t, err, context.Canceled)
	if sc, ok := s.KEK.(kek.StatusChecker); ok {
		require.ErrorIs(t, sc.Status(ctx), context.Canceled)
	}
	require.Less(t, time.Since(start), prompt, "calls with a cancelled context must return at once")
}

func testStatus(t *testing.T, s Subject) {
	sc, ok := s.KEK.(kek.StatusChecker)
	require.True(t, ok, "%T has no Status(ctx) error method", s.KEK)
	require.NoError(t, sc.Status(Context(t, opTimeout)))
}

func testConcurrent(t *testing.T, s Subject) {
	ctx := Context(t, opTimeout)
	const workers, rounds = 8, 4
	var wg sync.WaitGroup
	errs := make(chan error, workers*rounds)
	for w := range workers {
		wg.Go(func() {
			for r := range rounds {
				b := Binding(fmt.Sprintf("user-%d-%d", w, r), s.KEK.ID())
				plaintext := randomBytes(32)
				wrapped, err := s.KEK.Wrap(ctx, plaintext, b)
				if err != nil {
					errs <- err
					continue
				}
				back, err := s.KEK.Unwrap(ctx, wrapped, b)
				if err != nil {
					errs <- err
					continue
				}
				if !bytes.Equal(back, plaintext) {
					errs <- errors.New("concurrent round trip returned other bytes")
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
}

func testCallerDeadline(t *testing.T, s Subject) {
	if s.Stalled == nil {
		t.Skip("SKIP: this provider has no backend to stall (a local key)")
	}
	k := s.Stalled(t, BlackHole(t), time.Minute)
	for name, call := range calls(k) {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
			defer cancel()
			start := time.Now()
			err := call(ctx)
			require.Less(t, time.Since(start), prompt, "the caller's deadline was not honoured")
			require.ErrorIs(t, err, context.DeadlineExceeded)
			require.Equal(t, kek.ClassTimeout, kek.Classify(err), "a timeout classified otherwise: %v", err)
		})
	}
}

func testPerCallTimeout(t *testing.T, s Subject) {
	if s.Stalled == nil {
		t.Skip("SKIP: this provider has no backend to stall (a local key)")
	}
	k := s.Stalled(t, BlackHole(t), 300*time.Millisecond)
	for name, call := range calls(k) {
		t.Run(name, func(t *testing.T) {
			start := time.Now()
			err := call(Context(t, time.Minute))
			require.Less(t, time.Since(start), prompt, "the provider's per-call timeout was not honoured")
			RequireUnavailable(t, err)
		})
	}
}

func testOutage(t *testing.T, s Subject) {
	if s.Outage == nil {
		t.Skip("SKIP: this provider has no backend that could go down (a local key)")
	}
	k, down := s.Outage(t)
	ctx := Context(t, opTimeout)
	b := Binding("alice", k.ID())
	wrapped, err := k.Wrap(ctx, randomBytes(32), b)
	require.NoError(t, err)
	down()
	for name, call := range callsWith(k, wrapped, b) {
		t.Run(name, func(t *testing.T) { RequireUnavailable(t, call(ctx)) })
	}
}

func testDenied(t *testing.T, s Subject) {
	if s.Deny == nil {
		t.Skip("SKIP: this provider has no backend that could refuse (a local key)")
	}
	k, deny := s.Deny(t)
	ctx := Context(t, opTimeout)
	b := Binding("alice", k.ID())
	wrapped, err := k.Wrap(ctx, randomBytes(32), b)
	require.NoError(t, err)
	deny()
	for name, call := range callsWith(k, wrapped, b) {
		t.Run(name, func(t *testing.T) { RequireDenied(t, call(ctx)) })
	}
}

// calls lists one call of each kind against k, with a ciphertext that
// does not matter because the backend never answers.
func calls(k kek.KEK) map[string]func(ctx context.Context) error {
	return callsWith(k, []byte("vault:v1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"), Binding("alice", k.ID()))
}

func callsWith(k kek.KEK, wrapped []byte, b map[string]string) map[string]func(ctx context.Context) error {
	m := map[string]func(ctx context.Context) error{
		"Wrap": func(ctx context.Context) error {
			_, err := k.Wrap(ctx, randomBytes(32), b)
			return err
		},
		"Unwrap": func(ctx context.Context) error {
			_, err := k.Unwrap(ctx, wrapped, b)
			return err
		},
	}
	if sc, ok := k.(kek.StatusChecker); ok {
		m["Status"] = sc.Status
	}
	if rw, ok := k.(kek.Rewrapper); ok {
		m["Rewrap"] = func(ctx context.Context) error {
			_, err := rw.Rewrap(ctx, wrapped, b)
			return err
		}
	}
	if v, ok := k.(kek.Versioner); ok {
		m["LatestVersion"] = func(ctx context.Context) error {
			_, err := v.LatestVersion(ctx)
			return err
		}
	}
	return m
}

// BlackHole starts a TCP listener on 127.0.0.1 that accepts connections,
// reads and discards what arrives and never answers — a backend that
// hangs. It returns the listener's host:port and closes everything when
// the test ends.
func BlackHole(t testing.TB) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var (
		mu     sync.Mutex
		conns  []net.Conn
		closed bool
		wg     sync.WaitGroup
	)
	wg.Go(func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return // listener closed
			}
			mu.Lock()
			if closed {
				mu.Unlock()
				conn.Close()
				return
			}
			conns = append(conns, conn)
			mu.Unlock()
			wg.Go(func() {
				buf := make([]byte, 4096)
				for {
					if _, err := conn.Read(buf); err != nil {
						return // connection closed
					}
				}
			})
		}
	})
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		closed = true
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return ln.Addr().String()
}
