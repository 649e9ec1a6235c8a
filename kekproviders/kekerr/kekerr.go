// Package kekerr holds the error classes every KEK provider reports, so a
// caller can tell "the backend is down" from "the backend said no" from
// "this ciphertext does not open" without knowing any provider's SDK.
//
// Classification is by behaviour, not by type: an error anywhere in the
// chain with an Unavailable() bool or Denied() bool method returning true
// belongs to that class. The broker finds Unavailable() that way without
// importing this package (providers and the domain must not import each
// other), and the types here are the ones providers use to say it.
//
// Standard library only, so every provider can import it.
package kekerr

import (
	"errors"
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

// Unavailable reports true: this error means the backend is unreachable.
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

// Denied reports true: this error means the backend refused the request.
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

// IsUnavailable reports whether an error in err's chain has an
// Unavailable() method that returns true.
func IsUnavailable(err error) bool {
	var u interface{ Unavailable() bool }
	return errors.As(err, &u) && u.Unavailable()
}

// IsDenied reports whether an error in err's chain has a Denied() method
// that returns true.
func IsDenied(err error) bool {
	var d interface{ Denied() bool }
	return errors.As(err, &d) && d.Denied()
}

func errText(err error) string {
	if err == nil {
		return "<nil>"
	}
	return err.Error()
}
