package broker

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"time"
)

// Sealing: checkpoints over windows of created_at (docs/audit.md).

// AuditSettle is how long after its created_at a row is taken as
// committed: the sealer seals and the export follows only rows older
// than this. A row is stamped before its commit, and a commit of the
// fetch path is bounded by the request timeout, far below it. A row that
// still commits later is reported by VerifyAudit as late (genuine,
// unsealed).
const AuditSettle = 15 * time.Second

// auditSealBatch bounds the rows of one checkpoint.
const auditSealBatch = 20000

// auditTag is what a checkpoint or an erasure mark keeps of one row: its
// created_at in microseconds and a prefix of its MAC.
type auditTag struct {
	micros int64
	tag    [auditTagSize]byte
}

func tagOf(created time.Time, mac []byte) auditTag {
	t := auditTag{micros: created.UnixMicro()}
	copy(t.tag[:], mac)
	return t
}

// appendEntry encodes one row of a checkpoint: its created_at as an
// offset from base, shifted left by one with the low bit set when the
// row was sealed late, and the MAC tag.
func appendEntry(b []byte, base int64, t auditTag, late bool) []byte {
	v := uint64(t.micros-base) << 1
	if late {
		v |= 1
	}
	b = binary.AppendUvarint(b, v)
	return append(b, t.tag[:]...)
}

// auditEntryTag is a decoded entry.
type auditEntryTag struct {
	auditTag
	late bool
}

// decodeEntries reads what appendEntry wrote after base.
func decodeEntries(b []byte, base int64) ([]auditEntryTag, error) {
	var out []auditEntryTag
	for len(b) > 0 {
		v, n := binary.Uvarint(b)
		if n <= 0 || len(b) < n+auditTagSize {
			return nil, errors.New("malformed entries")
		}
		e := auditEntryTag{late: v&1 == 1}
		e.micros = base + int64(v>>1)
		copy(e.tag[:], b[n:n+auditTagSize])
		out = append(out, e)
		b = b[n+auditTagSize:]
	}
	return out, nil
}

// latestCheckpoint returns the newest checkpoint, nil when none.
func latestCheckpoint(ctx context.Context, store AuditCheckpointStore) (*AuditCheckpoint, error) {
	cps, err := store.AuditCheckpoints(ctx, -1, 1)
	if err != nil || len(cps) == 0 {
		return nil, err
	}
	return &cps[0], nil
}

// SealAudit writes the checkpoints of every row created before upto that
// no checkpoint covers yet, each of at most auditSealBatch rows, and
// returns how many it wrote. The first checkpoint of a store starts at
// its oldest row. Servers sealing at once agree: a checkpoint's number is
// unique, and a sealer that finds its number taken stops (the other one
// sealed). Callers pass now - AuditSettle.
func SealAudit(ctx context.Context, store AuditSealStore, key *AuditKey, upto time.Time) (int, error) {
	upto = upto.Truncate(time.Microsecond)
	last, err := latestCheckpoint(ctx, store)
	if err != nil {
		return 0, err
	}
	next := AuditCheckpoint{N: 1}
	if last != nil {
		next.N, next.From, next.PrevMAC = last.N+1, last.To, last.MAC
	} else {
		oldest, ok, err := store.AuditOldest(ctx)
		if err != nil || !ok {
			return 0, err
		}
		next.From = oldest
	}
	written := 0
	for next.From.Before(upto) {
		rows, err := store.AuditRows(ctx, AuditRange{From: next.From, To: upto, Limit: auditSealBatch})
		if err != nil {
			return written, err
		}
		next.To = upto
		if len(rows) == auditSealBatch {
			// Full: end the window at the last row's time, leaving the
			// rows of that very microsecond to the next one — unless
			// they fill it, then take them all.
			next.To = rows[len(rows)-1].CreatedAt
			for len(rows) > 0 && !rows[len(rows)-1].CreatedAt.Before(next.To) {
				rows = rows[:len(rows)-1]
			}
			if len(rows) == 0 {
				next.To = next.To.Add(time.Microsecond)
				if rows, err = store.AuditRows(ctx, AuditRange{From: next.From, To: next.To}); err != nil {
					return written, err
				}
			}
		}
		next.Rows, next.Entries = int64(len(rows)), nil
		base := next.From.UnixMicro()
		for i := range rows {
			mac, late := key.sealMAC(&rows[i])
			next.Entries = appendEntry(next.Entries, base, tagOf(rows[i].CreatedAt, mac), late)
		}
		next.KeyID = key.ID()
		next.MAC = key.checkpointMAC(&next)
		inserted, err := store.AuditCheckpointInsert(ctx, next)
		if err != nil {
			return written, err
		}
		if !inserted {
			return written, nil
		}
		written++
		next = AuditCheckpoint{N: next.N + 1, From: next.To, PrevMAC: next.MAC}
	}
	return written, nil
}

// MarkAuditRetention records, under the audit key, that rows created
// before before may be gone: the retention job calls it before it drops
// them (a partition, or a batch of the oldest rows), so that VerifyAudit
// accepts their absence. The newest mark's time is what counts.
func MarkAuditRetention(ctx context.Context, store AuditMarkStore, key *AuditKey, before, now time.Time) error {
	m := AuditMark{ID: newAuditID(now), Kind: AuditMarkRetention, CreatedAt: now.Truncate(time.Microsecond),
		Before: before.Truncate(time.Microsecond), KeyID: key.ID()}
	m.MAC = key.markMAC(&m)
	return store.AuditMarkInsert(ctx, m)
}

// ErasureMark returns the mark of erased rows, or nil when there are
// none: their created_at and MAC tags, no user id. The erasure writes it
// in the transaction that deletes them.
func (k *AuditKey) ErasureMark(erased []AuditEntry, now time.Time) *AuditMark {
	if len(erased) == 0 {
		return nil
	}
	m := AuditMark{ID: newAuditID(now), Kind: AuditMarkErasure, CreatedAt: now.Truncate(time.Microsecond), KeyID: k.ID()}
	for i := range erased {
		mac, _ := k.sealMAC(&erased[i])
		m.Entries = appendEntry(m.Entries, 0, tagOf(erased[i].CreatedAt, mac), false)
	}
	m.MAC = k.markMAC(&m)
	return &m
}

// String names a checkpoint in reports.
func (cp *AuditCheckpoint) String() string {
	return fmt.Sprintf("checkpoint %d [%s, %s)", cp.N, cp.From.UTC().Format(time.RFC3339Nano), cp.To.UTC().Format(time.RFC3339Nano))
}
