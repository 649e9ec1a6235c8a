//go:build !linux

package bench

import "time"

// preciseSleeper is time.Sleep where there is no timerfd.
type preciseSleeper struct{}

func newPreciseSleeper() *preciseSleeper      { return &preciseSleeper{} }
func (*preciseSleeper) sleep(d time.Duration) { time.Sleep(d) }
func (*preciseSleeper) close()                {}
