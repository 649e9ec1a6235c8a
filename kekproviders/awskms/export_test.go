package awskms

import "github.com/keybroker/keybroker/kekproviders/internal/inflight"

// WithDial makes the KEK's transport dial through dial.
func WithDial(dial inflight.DialFunc) func(*Config) {
	return func(c *Config) { c.dial = dial }
}

// Waiting returns how many calls wait for one of k's call slots.
func Waiting(k *KEK) int { return k.calls.Waiting() }
