package main

// systemd integration, through github.com/coreos/go-systemd: readiness
// and shutdown notifications (sd_notify), the watchdog, and socket
// activation. Outside systemd — no $NOTIFY_SOCKET, $WATCHDOG_USEC or
// $LISTEN_FDS — every function here falls back to plain behaviour, so
// `keybroker serve` in a container or a terminal is unchanged.
//
// The unit in deploy/systemd/keybroker.service is Type=notify: systemd
// counts keybroker as started only when READY=1 arrives, so READY=1 must
// mean "this process can answer key requests": migrations applied, the
// active KEK able to wrap and unwrap, and the HTTP server accepting.

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	"github.com/coreos/go-systemd/v22/daemon"
)

// listen returns the socket systemd passed (socket activation) when there
// is one, else a new TCP listener on addr. keybroker serves exactly one
// socket: a keybroker.socket with several Listen…= lines is refused
// rather than half served.
func listen(addr string, log *slog.Logger) (net.Listener, error) {
	// activation.Listeners ignores the sockets silently when $LISTEN_PID
	// names another process; read the variables first to say so.
	fds, pid := os.Getenv("LISTEN_FDS"), os.Getenv("LISTEN_PID")
	lns, err := activation.Listeners()
	if err != nil {
		return nil, fmt.Errorf("socket activation: %w", err)
	}
	switch {
	case len(lns) == 0 && fds != "":
		log.Warn("ignoring $LISTEN_FDS: $LISTEN_PID is not this process", slog.String("LISTEN_PID", pid),
			slog.Int("pid", os.Getpid()), slog.String("addr", addr))
	case len(lns) == 1 && lns[0] != nil:
		log.Info("socket activation: serving on the socket systemd passed", slog.String("addr", lns[0].Addr().String()))
		return lns[0], nil
	case len(lns) > 0:
		for _, ln := range lns {
			if ln != nil {
				ln.Close()
			}
		}
		if len(lns) == 1 {
			return nil, errors.New("socket activation: the socket systemd passed is not a stream socket: use ListenStream= in keybroker.socket")
		}
		return nil, fmt.Errorf("socket activation: systemd passed %d sockets; keybroker serves exactly one: keep a single ListenStream= in keybroker.socket", len(lns))
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	return ln, nil
}

// pinger is the part of the store the watchdog needs.
type pinger interface {
	Ping(ctx context.Context) error
}

// notifySystemd wraps ln so that systemd hears about the server's life:
// READY=1 once the HTTP server first accepts (it is then in its accept
// loop, after migrations) and kekOK is closed (the KEK check passed),
// STOPPING=1 when the server closes the listener (http.Server.Shutdown
// does that first, before draining). The listener is the one object the
// server touches at exactly those two moments, so serve.go needs no other
// hook. With the watchdog enabled (WatchdogSec= in the unit) it pings at
// half the interval from READY=1 on, while the store answers; a store
// that stops answering stops the pings, and systemd restarts the service.
func notifySystemd(ln net.Listener, store pinger, kekOK <-chan struct{}, log *slog.Logger) net.Listener {
	interval, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		log.Warn("systemd watchdog disabled: bad $WATCHDOG_USEC", slog.String("error", err.Error()))
		interval = 0
	}
	return newSDListener(ln, store, kekOK, interval, sdNotify, log)
}

// sdNotify sends state to $NOTIFY_SOCKET; sent is false outside systemd.
func sdNotify(state string) (sent bool, err error) {
	// Keep $NOTIFY_SOCKET: READY is followed by WATCHDOG and STOPPING.
	return daemon.SdNotify(false, state)
}

// sdListener is a net.Listener that tells systemd when serving starts and
// stops, and runs the watchdog in between.
type sdListener struct {
	net.Listener
	store    pinger
	kekOK    <-chan struct{}
	interval time.Duration // WATCHDOG_USEC; 0: no watchdog
	notify   func(state string) (bool, error)
	log      *slog.Logger

	acceptOnce, closeOnce sync.Once
	closeErr              error
	ctx                   context.Context // ends at Close
	cancel                context.CancelFunc
	done                  chan struct{} // closed when the READY/watchdog goroutine has ended (or never ran)
}

func newSDListener(ln net.Listener, store pinger, kekOK <-chan struct{}, interval time.Duration, notify func(string) (bool, error), log *slog.Logger) *sdListener {
	ctx, cancel := context.WithCancel(context.Background())
	return &sdListener{Listener: ln, store: store, kekOK: kekOK, interval: interval, notify: notify, log: log,
		ctx: ctx, cancel: cancel, done: make(chan struct{})}
}

// Accept starts the READY=1 notification on its first call:
// http.Server.Serve calls it once its accept loop runs.
func (l *sdListener) Accept() (net.Conn, error) {
	l.acceptOnce.Do(func() { go l.run() })
	return l.Listener.Accept()
}

// run waits for the KEK check, sends READY=1, then runs the watchdog
// until Close.
func (l *sdListener) run() {
	defer close(l.done)
	select {
	case <-l.kekOK:
	case <-l.ctx.Done():
		return
	}
	sent, err := l.notify(daemon.SdNotifyReady + "\n" + l.servingStatus())
	if err != nil {
		l.log.Warn("systemd notification failed", slog.String("state", "READY=1"), slog.String("error", err.Error()))
	}
	if !sent || l.interval <= 0 {
		return
	}
	l.log.Info("systemd watchdog enabled", slog.Duration("timeout", l.interval), slog.Duration("ping_every", l.interval/2))
	l.watchdog()
}

func (l *sdListener) servingStatus() string { return "STATUS=serving on " + l.Addr().String() }

// Close sends STOPPING=1 and stops the watchdog before closing the
// socket. http.Server closes its listeners more than once (Shutdown, then
// Serve's return); only the first call notifies.
func (l *sdListener) Close() error {
	l.closeOnce.Do(func() {
		l.acceptOnce.Do(func() { close(l.done) }) // never served
		l.cancel()
		<-l.done
		if _, err := l.notify(daemon.SdNotifyStopping + "\nSTATUS=shutting down"); err != nil {
			l.log.Warn("systemd notification failed", slog.String("state", "STOPPING=1"), slog.String("error", err.Error()))
		}
		l.closeErr = l.Listener.Close()
	})
	return l.closeErr
}

// watchdog pings systemd every interval/2 while the store answers within
// that time. It logs a change of health once, not every tick.
func (l *sdListener) watchdog() {
	every := l.interval / 2
	tick := time.NewTicker(every)
	defer tick.Stop()
	healthy := true
	for {
		select {
		case <-l.ctx.Done():
			return
		case <-tick.C:
		}
		pctx, cancel := context.WithTimeout(l.ctx, every)
		err := l.store.Ping(pctx)
		cancel()
		if l.ctx.Err() != nil {
			return
		}
		switch {
		case err != nil && healthy:
			healthy = false
			l.log.Error("store unreachable: withholding systemd watchdog pings; systemd restarts keybroker if this lasts "+l.interval.String(),
				slog.String("error", err.Error()))
			_, _ = l.notify("STATUS=store unreachable; watchdog pings withheld")
		case err == nil && !healthy:
			healthy = true
			l.log.Info("store reachable again: systemd watchdog pings resumed")
			_, _ = l.notify(l.servingStatus())
		}
		if healthy {
			if _, err := l.notify(daemon.SdNotifyWatchdog); err != nil {
				l.log.Warn("systemd notification failed", slog.String("state", "WATCHDOG=1"), slog.String("error", err.Error()))
			}
		}
	}
}
