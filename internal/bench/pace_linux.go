package bench

import (
	"os"
	"time"

	"golang.org/x/sys/unix"
)

// preciseSleeper sleeps on a timerfd read through the runtime's network
// poller: epoll_wait returns as the timer fires, to the microsecond,
// where a runtime timer in an idle process fires on the next whole
// millisecond of epoll_wait's timeout.
type preciseSleeper struct {
	fd   int
	file *os.File // nil when no timerfd could be made: time.Sleep then
}

func newPreciseSleeper() *preciseSleeper {
	fd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_NONBLOCK|unix.TFD_CLOEXEC)
	if err != nil {
		return &preciseSleeper{}
	}
	return &preciseSleeper{fd: fd, file: os.NewFile(uintptr(fd), "timerfd")}
}

func (s *preciseSleeper) sleep(d time.Duration) {
	if s.file == nil {
		time.Sleep(d)
		return
	}
	spec := unix.ItimerSpec{Value: unix.NsecToTimespec(d.Nanoseconds())}
	if err := unix.TimerfdSettime(s.fd, 0, &spec, nil); err != nil {
		time.Sleep(d)
		return
	}
	var expirations [8]byte
	if _, err := s.file.Read(expirations[:]); err != nil {
		time.Sleep(d)
	}
}

func (s *preciseSleeper) close() {
	if s.file != nil {
		_ = s.file.Close()
	}
}
