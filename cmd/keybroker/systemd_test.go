package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// events records, in order, what the watchdog did: store pings and
// notifications share one channel so their order is observable.
type events chan string

func (e events) notify(state string) (bool, error) {
	e <- state
	return true, nil
}

// next returns the next event, failing the test after a bounded wait.
func (e events) next(t *testing.T) string {
	t.Helper()
	select {
	case ev := <-e:
		return ev
	case <-time.After(10 * time.Second):
		t.Fatal("no event within 10s")
		return ""
	}
}

// flakyStore answers Ping with whatever err holds, and reports each ping.
type flakyStore struct {
	ev  events
	err atomic.Pointer[error]
}

func (s *flakyStore) Ping(context.Context) error {
	if p := s.err.Load(); p != nil {
		s.ev <- "ping:fail"
		return *p
	}
	s.ev <- "ping:ok"
	return nil
}

// okStore always answers.
type okStore struct{}

func (okStore) Ping(context.Context) error { return nil }

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// TestSDListenerLifecycle: READY=1 on the first Accept, WATCHDOG=1 after
// each good store ping and none while the store fails, STOPPING=1 on
// Close after which the watchdog is silent.
func TestSDListenerLifecycle(t *testing.T) {
	t.Parallel()
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ev := make(events, 64)
	store := &flakyStore{ev: ev}
	ln := newSDListener(tcp, store, kekChecked(), 40*time.Millisecond, ev.notify, discardLogger())

	accepted := make(chan error, 1)
	go func() {
		conn, err := ln.Accept()
		if err == nil {
			conn.Close()
		}
		accepted <- err
	}()
	require.Equal(t, "READY=1\nSTATUS=serving on "+tcp.Addr().String(), ev.next(t))

	require.Equal(t, "ping:ok", ev.next(t))
	require.Equal(t, "WATCHDOG=1", ev.next(t))

	storeDown := errors.New("connection refused")
	store.err.Store(&storeDown)
	// Skip events of a tick already under way when the store went down.
	for ev.next(t) != "ping:fail" {
	}
	require.Equal(t, "STATUS=store unreachable; watchdog pings withheld", ev.next(t))
	require.Equal(t, "ping:fail", ev.next(t), "no WATCHDOG=1 while the store fails")
	require.Equal(t, "ping:fail", ev.next(t), "no WATCHDOG=1 while the store fails")

	store.err.Store(nil)
	for ev.next(t) != "ping:ok" {
	}
	require.Equal(t, "STATUS=serving on "+tcp.Addr().String(), ev.next(t))
	require.Equal(t, "WATCHDOG=1", ev.next(t))

	require.NoError(t, ln.Close())
	// Close waited for the watchdog; the last event is STOPPING=1.
	var last string
	for len(ev) > 0 {
		last = <-ev
	}
	require.Equal(t, "STOPPING=1\nSTATUS=shutting down", last)
	require.Empty(t, ev, "nothing after STOPPING=1")
	require.NoError(t, ln.Close(), "a second Close (Serve's) is harmless and silent")
	require.Empty(t, ev)
	select {
	case err := <-accepted:
		require.Error(t, err, "Accept fails once closed")
	case <-time.After(10 * time.Second):
		t.Fatal("Accept did not return after Close")
	}
}

// TestSDListenerOutsideSystemd: without $NOTIFY_SOCKET nothing is sent,
// so no watchdog runs even when an interval is configured, and Close
// before any Accept still works.
func TestSDListenerOutsideSystemd(t *testing.T) {
	t.Parallel()
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	tried := make(events, 8)
	notSent := func(state string) (bool, error) { tried <- state; return false, nil }
	pinged := make(events, 8)
	ln := newSDListener(tcp, &flakyStore{ev: pinged}, kekChecked(), time.Millisecond, notSent, discardLogger())
	serving(ln)
	require.True(t, strings.HasPrefix(tried.next(t), "READY=1\n"))
	// A watchdog started by mistake would ping within this window.
	select {
	case p := <-pinged:
		t.Fatalf("watchdog ran outside systemd: %q", p)
	case <-time.After(50 * time.Millisecond):
	}
	require.NoError(t, ln.Close())
	require.True(t, strings.HasPrefix(tried.next(t), "STOPPING=1\n"))
	require.Empty(t, tried, "READY and STOPPING tried, nothing else")
	require.Empty(t, pinged)

	never := newSDListener(mustListen(t), &flakyStore{ev: pinged}, kekChecked(), time.Millisecond, notSent, discardLogger())
	require.NoError(t, never.Close(), "Close before the server ever accepted")
	require.True(t, strings.HasPrefix(tried.next(t), "STOPPING=1\n"))
}

// TestSDListenerWaitsForKEKCheck: serving is not enough for READY=1; the
// KEK check must have passed too. A stop before it passes sends only
// STOPPING=1.
func TestSDListenerWaitsForKEKCheck(t *testing.T) {
	t.Parallel()
	ev := make(events, 16)
	kekOK := make(chan struct{})
	ln := newSDListener(mustListen(t), okStore{}, kekOK, time.Hour, ev.notify, discardLogger())
	serving(ln)
	select {
	case e := <-ev:
		t.Fatalf("%q before the KEK check passed", e)
	case <-time.After(200 * time.Millisecond):
	}
	close(kekOK)
	require.True(t, strings.HasPrefix(ev.next(t), "READY=1\n"))
	require.NoError(t, ln.Close())
	require.True(t, strings.HasPrefix(ev.next(t), "STOPPING=1\n"))

	never := newSDListener(mustListen(t), okStore{}, make(chan struct{}), time.Hour, ev.notify, discardLogger())
	serving(never)
	require.NoError(t, never.Close())
	require.True(t, strings.HasPrefix(ev.next(t), "STOPPING=1\n"), "no READY=1 without a KEK check")
	require.Empty(t, ev)
}

// serving does what the HTTP server's first Accept does.
func serving(l *sdListener) { l.acceptOnce.Do(func() { go l.run() }) }

// kekChecked is the channel of a KEK check that passed.
func kekChecked() <-chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}

func mustListen(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	return ln
}

// TestNotifySystemdSendsToNotifySocket drives the real go-systemd path:
// $NOTIFY_SOCKET and $WATCHDOG_USEC from the environment, datagrams on a
// socket the test owns.
func TestNotifySystemdSendsToNotifySocket(t *testing.T) {
	sock := newNotifySocket(t)
	t.Setenv("NOTIFY_SOCKET", sock.path)
	t.Setenv("WATCHDOG_USEC", "100000")
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))
	ln := notifySystemd(mustListen(t), okStore{}, kekChecked(), discardLogger())
	serving(ln.(*sdListener))
	require.True(t, strings.HasPrefix(sock.next(t, 10*time.Second), "READY=1\n"))
	require.Equal(t, "WATCHDOG=1", sock.next(t, 10*time.Second))
	require.NoError(t, ln.Close())
	for {
		msg := sock.next(t, 10*time.Second)
		if strings.HasPrefix(msg, "STOPPING=1") {
			break
		}
		require.Equal(t, "WATCHDOG=1", msg)
	}
}

// TestNotifySystemdWatchdogForAnotherPID: $WATCHDOG_PID naming another
// process (a wrapper that forked) disables the pings, as sd_watchdog_enabled
// does.
func TestNotifySystemdWatchdogForAnotherPID(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", newNotifySocket(t).path)
	t.Setenv("WATCHDOG_USEC", "100000")
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()+1))
	ln := notifySystemd(mustListen(t), okStore{}, kekChecked(), discardLogger())
	require.Zero(t, ln.(*sdListener).interval)
	require.NoError(t, ln.Close())
}

// TestListenIgnoresSocketsForAnotherProcess: $LISTEN_FDS meant for
// another pid is not ours to use; keybroker listens on its address.
func TestListenIgnoresSocketsForAnotherProcess(t *testing.T) {
	t.Setenv("LISTEN_FDS", "1")
	t.Setenv("LISTEN_PID", strconv.Itoa(os.Getpid()+1))
	var logs syncBuffer
	ln, err := listen("127.0.0.1:0", slog.New(slog.NewTextHandler(&logs, nil)))
	require.NoError(t, err)
	defer ln.Close()
	require.Equal(t, "tcp", ln.Addr().Network())
	require.Contains(t, logs.String(), "LISTEN_PID is not this process")
	_, set := os.LookupEnv("LISTEN_FDS")
	require.False(t, set, "the variables are cleared so a child never inherits them")
}

func TestListenReportsBusyAddress(t *testing.T) {
	busy := mustListen(t)
	defer busy.Close()
	_, err := listen(busy.Addr().String(), discardLogger())
	require.ErrorContains(t, err, "listen "+busy.Addr().String())
}

// notifySocket is a unix datagram socket standing in for systemd's.
type notifySocket struct {
	path string
	conn *net.UnixConn
}

func newNotifySocket(t *testing.T) *notifySocket {
	t.Helper()
	// Socket paths are limited to 108 bytes; t.TempDir can be longer.
	dir, err := os.MkdirTemp("", "kb-sd")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := dir + "/notify"
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	return &notifySocket{path: path, conn: conn}
}

// next reads one datagram, failing the test when none arrives in time.
func (s *notifySocket) next(t *testing.T, within time.Duration) string {
	t.Helper()
	msg, err := s.read(within)
	require.NoError(t, err, "no notification within %s", within)
	return msg
}

func (s *notifySocket) read(within time.Duration) (string, error) {
	buf := make([]byte, 4096)
	if err := s.conn.SetReadDeadline(time.Now().Add(within)); err != nil {
		return "", err
	}
	n, _, err := s.conn.ReadFromUnix(buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

// drain returns the datagrams already queued. The sender has exited when
// it is called, so a short deadline only ends the read of an empty queue.
func (s *notifySocket) drain() []string {
	var out []string
	for {
		msg, err := s.read(100 * time.Millisecond)
		if err != nil {
			return out
		}
		out = append(out, msg)
	}
}
