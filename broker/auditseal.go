package broker

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"sync"
	"sync/atomic"
	"time"
)

// Tamper evidence of the audit trail (docs/audit.md has the design and
// its limits). Every audit row carries a MAC under the audit key, which
// only a holder of keybroker's keyring can open; a background sealer
// writes checkpoints that list, window by window of created_at, a short
// tag of every row the window held, chained by MAC. VerifyAudit then
// names every row modified, inserted or deleted by SQL.

// The audit key's id: one key per store (rotating it is not supported).
const auditKeyID = "audit-1"

// The MAC labels: a row keybroker wrote with its MAC, a row the sealer
// found without one (written by an older release, or by SQL before the
// sealer saw it), a checkpoint and a mark.
const (
	labelAuditRow        = "keybroker/audit-row/v1"
	labelAuditRowLate    = "keybroker/audit-row-sealed-late/v1"
	labelAuditCheckpoint = "keybroker/audit-checkpoint/v1"
	labelAuditMark       = "keybroker/audit-mark/v1"
)

// auditTagSize is the length of the MAC prefix a checkpoint or an
// erasure mark keeps of each row.
const auditTagSize = 8

// AuditKeyWrap is the audit key wrapped by one configured KEK.
type AuditKeyWrap struct {
	ID        string
	WrappedBy string
	Wrapped   []byte
}

// AuditCheckpoint seals the rows whose created_at lies in [From, To): it
// keeps their count and, per row, its created_at and a tag of its MAC
// (Entries), and is chained to checkpoint N-1 by PrevMAC.
type AuditCheckpoint struct {
	N         int64
	From, To  time.Time
	Rows      int64
	Entries   []byte
	PrevMAC   []byte
	KeyID     string
	MAC       []byte
	CreatedAt time.Time
}

// AuditMarkKind says why sealed rows may legitimately be gone.
type AuditMarkKind string

// The kinds of AuditMark.
const (
	// AuditMarkRetention: every row created before Before may be gone.
	AuditMarkRetention AuditMarkKind = "retention"
	// AuditMarkErasure: the rows listed in Entries (created_at and MAC
	// tag, never a user id) were erased under the right to be forgotten.
	AuditMarkErasure AuditMarkKind = "erasure"
)

// AuditMark records, under the audit key, that sealed rows were removed
// legitimately: by retention or by an erasure.
type AuditMark struct {
	ID        string
	Kind      AuditMarkKind
	CreatedAt time.Time
	Before    time.Time // AuditMarkRetention
	Entries   []byte    // AuditMarkErasure
	KeyID     string
	MAC       []byte
}

// AuditRange selects audit rows of every user with From <= created_at <
// To, in ascending (CreatedAt, ID) order, after After when it is set, at
// most Limit (no limit when 0).
type AuditRange struct {
	From, To time.Time
	After    *AuditCursor
	Limit    int
}

// The store abilities of tamper evidence, optional: a store without them
// writes MACs but cannot be sealed or verified.
type (
	// AuditKeyStore keeps the wraps of the audit key.
	AuditKeyStore interface {
		// AuditKeyWraps lists every wrap of the audit key.
		AuditKeyWraps(ctx context.Context) ([]AuditKeyWrap, error)
		// AuditKeyWrapInsert stores w unless a wrap of the same id by
		// the same KEK exists.
		AuditKeyWrapInsert(ctx context.Context, w AuditKeyWrap) error
	}
	// AuditRowReader reads audit rows across users, with their MACs.
	AuditRowReader interface {
		// AuditRows returns the rows r selects.
		AuditRows(ctx context.Context, r AuditRange) ([]AuditEntry, error)
		// AuditOldest returns the smallest created_at, ok false when
		// the table is empty.
		AuditOldest(ctx context.Context) (t time.Time, ok bool, err error)
	}
	// AuditCheckpointStore keeps the checkpoints.
	AuditCheckpointStore interface {
		// AuditCheckpoints returns up to limit checkpoints with N >
		// after, in ascending N; after < 0 returns the newest only.
		AuditCheckpoints(ctx context.Context, after int64, limit int) ([]AuditCheckpoint, error)
		// AuditCheckpointInsert stores cp unless checkpoint cp.N
		// exists, and reports whether it did.
		AuditCheckpointInsert(ctx context.Context, cp AuditCheckpoint) (bool, error)
	}
	// AuditMarkStore keeps the retention and erasure marks.
	AuditMarkStore interface {
		// AuditMarks lists every mark.
		AuditMarks(ctx context.Context) ([]AuditMark, error)
		// AuditMarkInsert stores m.
		AuditMarkInsert(ctx context.Context, m AuditMark) error
	}
	// AuditSealStore is every ability sealing and verifying use.
	AuditSealStore interface {
		AuditKeyStore
		AuditRowReader
		AuditCheckpointStore
		AuditMarkStore
	}
)

// AuditKey is the secret of the audit trail's MACs. It is generated once
// per store and kept only wrapped by the configured KEKs.
type AuditKey struct {
	id  string
	key []byte
	// macs are keyed HMAC states with a scratch buffer, reused: the fetch
	// path computes three MACs per request.
	macs sync.Pool
}

// macState is one pooled HMAC and the buffer its message is built in.
type macState struct {
	h   hash.Hash
	buf []byte
}

func newAuditKey(id string, key []byte) *AuditKey {
	k := &AuditKey{id: id, key: key}
	k.macs.New = func() any { return &macState{h: hmac.New(sha256.New, key), buf: make([]byte, 0, 512)} }
	return k
}

// ID names the key in checkpoints and marks.
func (k *AuditKey) ID() string { return k.id }

// sum returns the MAC of the message build appends after label, each
// field length-prefixed (appendField), so that no two field lists
// encode alike.
func (k *AuditKey) sum(label string, build func(b []byte) []byte) []byte {
	return k.appendSum(nil, label, build)
}

// appendSum appends the MAC sum returns to dst.
func (k *AuditKey) appendSum(dst []byte, label string, build func(b []byte) []byte) []byte {
	st := k.macs.Get().(*macState)
	st.buf = build(appendField(st.buf[:0], label))
	st.h.Reset()
	st.h.Write(st.buf)
	mac := st.h.Sum(dst)
	k.macs.Put(st)
	return mac
}

// appendField appends f length-prefixed.
func appendField[T string | []byte](b []byte, f T) []byte {
	b = binary.AppendUvarint(b, uint64(len(f)))
	return append(b, f...)
}

// rowMAC is the MAC of e's fields under label. CreatedAt counts in
// microseconds, the precision both stores keep.
func (k *AuditKey) rowMAC(label string, e *AuditEntry) []byte {
	return k.appendRowMAC(nil, label, e)
}

// appendRowMAC appends rowMAC's MAC to dst.
func (k *AuditKey) appendRowMAC(dst []byte, label string, e *AuditEntry) []byte {
	return k.appendSum(dst, label, func(b []byte) []byte {
		for _, f := range [...]string{e.ID, e.UserID, string(e.Action), e.IPAddress, e.UserAgent, e.Context} {
			b = appendField(b, f)
		}
		b = binary.BigEndian.AppendUint64(b, uint64(int64(e.Status)))
		return binary.BigEndian.AppendUint64(b, uint64(e.CreatedAt.UnixMicro()))
	})
}

// RowMAC is the MAC keybroker writes with e.
func (k *AuditKey) RowMAC(e *AuditEntry) []byte { return k.rowMAC(labelAuditRow, e) }

// sealMAC is the MAC a checkpoint or an erasure mark keeps of e: the one
// it was written with, else one computed when it was sealed.
func (k *AuditKey) sealMAC(e *AuditEntry) (mac []byte, late bool) {
	if e.MAC != nil {
		return e.MAC, false
	}
	return k.rowMAC(labelAuditRowLate, e), true
}

func (k *AuditKey) checkpointMAC(cp *AuditCheckpoint) []byte {
	return k.sum(labelAuditCheckpoint, func(b []byte) []byte {
		for _, v := range [...]int64{cp.N, cp.From.UnixMicro(), cp.To.UnixMicro(), cp.Rows} {
			b = binary.BigEndian.AppendUint64(b, uint64(v))
		}
		return appendField(appendField(b, cp.Entries), cp.PrevMAC)
	})
}

func (k *AuditKey) markMAC(mk *AuditMark) []byte {
	return k.sum(labelAuditMark, func(b []byte) []byte {
		b = appendField(appendField(b, mk.ID), string(mk.Kind))
		b = binary.BigEndian.AppendUint64(b, uint64(mk.CreatedAt.UnixMicro()))
		b = binary.BigEndian.AppendUint64(b, uint64(mk.Before.UnixMicro()))
		return appendField(b, mk.Entries)
	})
}

// auditKeyBinding binds a wrap of the audit key to its purpose, so that
// no other wrap of the KEK (a master key's, a data key's) passes for it.
func auditKeyBinding(id, kekID string) map[string]string {
	return map[string]string{"purpose": "keybroker-audit-key", "audit_key_id": id, "kek_id": kekID}
}

// ErrAuditKeyUnopenable means the audit key exists but none of its wraps
// is by a configured KEK.
var ErrAuditKeyUnopenable = errors.New("broker: the audit key is wrapped only by KEKs that are not configured")

// LoadAuditKey returns the store's audit key, unwrapped by the first
// configured KEK that wrapped it. The first call on a store generates it
// and wraps it with the active configured KEK; a key not yet wrapped by
// the active KEK gets that wrap too, so it outlives the retirement of
// the older KEKs. Concurrent first calls agree on one key: only the
// first wrap of an (id, KEK) pair is kept, and every caller reads the
// key back from the store. It returns ErrAuditKeyUnopenable, or the
// KEK's or the store's error.
func LoadAuditKey(ctx context.Context, store AuditKeyStore, keyring *Keyring) (*AuditKey, error) {
	configured := keyring.Configured()
	active := configured[0]
	wraps, err := store.AuditKeyWraps(ctx)
	if err != nil {
		return nil, err
	}
	if len(wraps) == 0 {
		key := make([]byte, 32)
		rand.Read(key)
		wrapped, err := keyring.wrap(ctx, active, key, auditKeyBinding(auditKeyID, active.ID()))
		wipe(key)
		if err != nil {
			return nil, fmt.Errorf("broker: wrap the new audit key: %w", err)
		}
		if err := store.AuditKeyWrapInsert(ctx, AuditKeyWrap{ID: auditKeyID, WrappedBy: active.ID(), Wrapped: wrapped}); err != nil {
			return nil, err
		}
		if wraps, err = store.AuditKeyWraps(ctx); err != nil {
			return nil, err
		}
	}
	var key []byte
	hasActive := false
	for _, w := range wraps {
		hasActive = hasActive || (w.ID == auditKeyID && w.WrappedBy == active.ID())
		for _, k := range configured {
			if key != nil || w.ID != auditKeyID || k.ID() != w.WrappedBy {
				continue
			}
			if key, err = keyring.unwrap(ctx, k, w.Wrapped, auditKeyBinding(w.ID, w.WrappedBy)); err != nil {
				return nil, fmt.Errorf("broker: unwrap the audit key with KEK %q: %w", k.ID(), err)
			}
		}
	}
	if key == nil {
		return nil, ErrAuditKeyUnopenable
	}
	if !hasActive {
		wrapped, err := keyring.wrap(ctx, active, key, auditKeyBinding(auditKeyID, active.ID()))
		if err != nil {
			return nil, fmt.Errorf("broker: wrap the audit key with the active KEK: %w", err)
		}
		if err := store.AuditKeyWrapInsert(ctx, AuditKeyWrap{ID: auditKeyID, WrappedBy: active.ID(), Wrapped: wrapped}); err != nil {
			return nil, err
		}
	}
	return newAuditKey(auditKeyID, key), nil
}

// AuditSeal holds a server's audit key once it is loaded: rows written
// before (a KEK outage at start) carry no MAC and are sealed late.
type AuditSeal struct {
	key atomic.Pointer[AuditKey]
}

// Key returns the loaded key, nil before.
func (a *AuditSeal) Key() *AuditKey {
	if a == nil {
		return nil
	}
	return a.key.Load()
}

// SetKey makes k the key of every row written from now on.
func (a *AuditSeal) SetKey(k *AuditKey) { a.key.Store(k) }

// stamp sets e's MAC under the loaded key, if any. CreatedAt is cut to
// the microsecond first: the stores keep no more, and the MAC must cover
// what they keep.
func (a *AuditSeal) stamp(e *AuditEntry) {
	e.CreatedAt = e.CreatedAt.Truncate(time.Microsecond)
	e.MAC = nil
	if k := a.Key(); k != nil {
		e.MAC = k.RowMAC(e)
	}
}

// stampFetch sets f's MACs, one per recorded case: the store writes the
// one of the case it finds. They are written into f's own macBytes, not
// allocated one by one.
func (a *AuditSeal) stampFetch(f *Fetch, outcomes *[FetchDeferred]FetchOutcome) {
	f.Audit.CreatedAt = f.Audit.CreatedAt.Truncate(time.Microsecond)
	k := a.Key()
	if k == nil {
		return
	}
	for c, o := range outcomes {
		e := *f.Audit
		e.Action, e.Status, e.Context = o.Action, o.Status, o.Context
		f.MACs[c] = k.appendRowMAC(f.macBytes[c][:0], labelAuditRow, &e)
	}
}
