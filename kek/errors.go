package kek

import (
	"context"
	"errors"
	"net"
	"net/url"
)

// ErrInvalidCiphertext means the backend answered and refused to decrypt:
// the ciphertext is corrupt, was made by another key, or was bound to a
// different binding context. It is the one class that says something about
// the stored data rather than about the backend.
var ErrInvalidCiphertext = errors.New("ciphertext does not open under this key and binding")

// UnavailableError reports that the KEK backend could not be reached, did
// not answer in time, was throttling or answered with a server-side error.
// Nothing is wrong with the data; retrying later may work.
type UnavailableError struct {
	Err error
}

// Error returns the underlying error's text with the class in front.
func (e *UnavailableError) Error() string { return "KEK backend unavailable: " + errText(e.Err) }

// Unwrap returns the underlying error.
func (e *UnavailableError) Unwrap() error { return e.Err }

// Unavailable reports true: Classify finds the class by this method, so
// another package's error (the domain's, which cannot be this type) can
// say the same.
func (e *UnavailableError) Unavailable() bool { return true }

// DeniedError reports that the KEK backend answered and refused the
// operation: missing permission, bad credentials, a disabled or deleted
// key. An operator has to act; retrying will not help.
type DeniedError struct {
	Err error
}

// Error returns the underlying error's text with the class in front.
func (e *DeniedError) Error() string { return "KEK backend denied the request: " + errText(e.Err) }

// Unwrap returns the underlying error.
func (e *DeniedError) Unwrap() error { return e.Err }

// Denied reports true: Classify finds the class by this method.
func (e *DeniedError) Denied() bool { return true }

// Unavailable wraps err as an *UnavailableError; nil stays nil.
func Unavailable(err error) error {
	if err == nil {
		return nil
	}
	return &UnavailableError{Err: err}
}

// Denied wraps err as a *DeniedError; nil stays nil.
func Denied(err error) error {
	if err == nil {
		return nil
	}
	return &DeniedError{Err: err}
}

func errText(err error) string {
	if err == nil {
		return "<nil>"
	}
	return err.Error()
}

// Class is what an error says about a call: Classify names it.
type Class int

// The classes, in the order Classify tests them.
const (
	// ClassOK is no error.
	ClassOK Class = iota
	// ClassTimeout: a deadline ran out (the caller's or the provider's
	// per-call timeout) before the backend answered.
	ClassTimeout
	// ClassCanceled: the caller gave up.
	ClassCanceled
	// ClassUnavailable: the backend could not be reached or failed
	// server-side (an error with an Unavailable() bool method that
	// returns true, or a network error: *net.OpError, *net.DNSError,
	// *url.Error).
	ClassUnavailable
	// ClassDenied: the backend answered and refused (an error with a
	// Denied() bool method that returns true).
	ClassDenied
	// ClassInvalidCiphertext: the backend answered and the wrap does not
	// open (ErrInvalidCiphertext).
	ClassInvalidCiphertext
	// ClassOther: anything else — a bug or a misconfiguration, reported
	// as it is.
	ClassOther
)

// String is the class as the KEK metrics' outcome label spells it.
func (c Class) String() string {
	switch c {
	case ClassOK:
		return "ok"
	case ClassTimeout:
		return "timeout"
	case ClassCanceled:
		return "canceled"
	case ClassUnavailable:
		return "unavailable"
	case ClassDenied:
		return "denied"
	case ClassInvalidCiphertext:
		return "invalid_ciphertext"
	default:
		return "error"
	}
}

// Outage reports whether the class means "no answer" — unavailable, a
// timeout or a cancelled call — rather than an answer: retrying later may
// work, nothing is wrong with the data, and no operator needs to act.
func (c Class) Outage() bool {
	return c == ClassUnavailable || c == ClassTimeout || c == ClassCanceled
}

// Classify names the class of err, looking through its whole chain: a
// context error first (whatever a provider made of it), then the
// Unavailable() and Denied() methods, then ErrInvalidCiphertext, then a
// network error of the standard library. It is the one place that decides
// whether an error is an outage.
//
// A network error is one of the net and net/url types, not any net.Error:
// syscall.Errno implements that interface too, so a missing local file
// would pass for an outage.
func Classify(err error) Class {
	var (
		unavailable interface{ Unavailable() bool }
		denied      interface{ Denied() bool }
		opErr       *net.OpError
		dnsErr      *net.DNSError
		urlErr      *url.Error
	)
	switch {
	case err == nil:
		return ClassOK
	case errors.Is(err, context.DeadlineExceeded):
		return ClassTimeout
	case errors.Is(err, context.Canceled):
		return ClassCanceled
	case errors.As(err, &unavailable) && unavailable.Unavailable():
		return ClassUnavailable
	case errors.As(err, &denied) && denied.Denied():
		return ClassDenied
	case errors.Is(err, ErrInvalidCiphertext):
		return ClassInvalidCiphertext
	case errors.As(err, &opErr), errors.As(err, &dnsErr), errors.As(err, &urlErr):
		return ClassUnavailable
	default:
		return ClassOther
	}
}
