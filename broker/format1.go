package broker

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"time"
)

// Format 1 closes behind the re-wrap job.
//
// A format-1 wrap is bound to nothing: whoever can write vault rows can
// paste another user's format-1 wrap into a row of their own, and opening
// it would hand them that user's master key. Format 1 is therefore only
// open while rows need it. The store keeps a one-way flag: open only if
// the migration that added it found rows with a format-1 server wrap, and
// closed by the re-wrap job once it has upgraded all of them — for good:
// the store refuses to reopen it, and format-1 rows written afterwards do
// not reopen it, because the flag is never derived from counting rows.
//
// Every path that opens a wrap (fetch, init, the zero-knowledge switches,
// the re-wrap job) asks before opening a format-1 wrap. A closed answer is
// remembered; an open one is not, so that a replica learns of the closure
// at its next format-1 wrap, not at some later refresh. Format-2 rows,
// the hot path, are not asked about at all.

// Format1State is the format-1 closure flag.
type Format1State struct {
	Closed bool
	// ClosedAt and ClosedBy say when and by whom (a re-wrap runner, or
	// the migration of an install that never held a format-1 row); zero
	// while open.
	ClosedAt time.Time
	ClosedBy string
}

// ErrFormat1Closed refuses to open a format-1 wrap once format 1 is
// closed. It comes wrapped with ErrUnwrapFailed: to a client it is a wrap
// that does not open, like a tampered one.
var ErrFormat1Closed = errors.New("format 1 is closed: a format-1 wrap no longer opens")

// errFormat1Unknown wraps a failure to read the flag that is not an
// outage: the format-1 wrap is refused, as when closed.
var errFormat1Unknown = errors.New("cannot read whether format 1 is closed")

// format1Gate answers "may a format-1 wrap open now?" for one Service or
// RewrapJob.
type format1Gate struct {
	store  Format1Store
	closed atomic.Bool // sticky: once closed, closed for good
}

func newFormat1Gate(store Format1Store) *format1Gate {
	return &format1Gate{store: store}
}

// check returns nil while format 1 is open; ErrFormat1Closed (wrapped
// with ErrUnwrapFailed) once it is closed; an *UnavailableError when the
// store cannot be asked.
func (g *format1Gate) check(ctx context.Context) error {
	if g.closed.Load() {
		return errFormat1Closed
	}
	st, err := g.store.Format1State(ctx)
	if err != nil {
		if IsUnavailable(err) {
			return err
		}
		return fmt.Errorf("%w: %w", errFormat1Unknown, err)
	}
	if st.Closed {
		g.closed.Store(true)
		return errFormat1Closed
	}
	return nil
}

// learn records a state read elsewhere (the job's closing).
func (g *format1Gate) learn(st Format1State) {
	if st.Closed {
		g.closed.Store(true)
	}
}

var errFormat1Closed = fmt.Errorf("%w: %w", ErrUnwrapFailed, ErrFormat1Closed)

// needsFormat1 reports whether opening v's server wrap needs format 1 open.
func needsFormat1(v *Vault) bool {
	return v.FormatVersion == FormatLegacy && v.WrappedMK != nil
}

// open unwraps v's master key; a format-1 wrap only while format 1 is open.
func (s *Service) open(ctx context.Context, userID string, v *Vault) ([]byte, error) {
	if needsFormat1(v) {
		if err := s.format1.check(ctx); err != nil {
			return nil, err
		}
	}
	return s.keyring.open(ctx, userID, v)
}

// openLatest is open for a vault that may have been read before a change
// that is committed by now. Format 1 closes right after the re-wrap job
// upgraded the last format-1 rows, so a fetch that read one of them just
// before may find it closed: the row is then read once more — in tx when
// set, else with VaultRead — and what is stored now is opened. A format-1 wrap is refused again, so a pasted one gains
// nothing. It returns the vault it opened.
func (s *Service) openLatest(ctx context.Context, userID string, v *Vault, tx Tx) ([]byte, *Vault, error) {
	mk, err := s.open(ctx, userID, v)
	if err == nil || !errors.Is(err, ErrFormat1Closed) {
		return mk, v, err
	}
	var fresh *Vault
	var rerr error
	if tx != nil {
		fresh, rerr = tx.VaultGet(ctx, false)
	} else {
		fresh, rerr = s.store.VaultRead(ctx, userID)
	}
	if rerr != nil || fresh.ZeroKnowledge || fresh.WrappedMK == nil || sameWrap(fresh, v) {
		return nil, v, err
	}
	mk, err = s.open(ctx, userID, fresh)
	return mk, fresh, err
}
