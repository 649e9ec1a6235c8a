package broker

import (
	"context"
	"crypto/hmac"
	"encoding/hex"
	"fmt"
	"time"
)

// AuditFindingKind names what VerifyAudit found wrong.
type AuditFindingKind string

// The kinds of AuditFinding. Each is evidence of a write that keybroker
// did not make, except AuditStale, which may also mean that no server
// sealed for a while.
const (
	// AuditModified: the row's fields no longer match its MAC, and its
	// checkpoint sealed a row of that time and MAC: it was edited.
	AuditModified AuditFindingKind = "modified"
	// AuditForged: the row's MAC is wrong (or missing) and no checkpoint
	// sealed it: inserted by SQL, or edited including its time or MAC
	// (a reordering moves a row's time).
	AuditForged AuditFindingKind = "forged"
	// AuditDeleted: a checkpoint sealed a row that is gone, and no
	// retention or erasure mark accounts for it.
	AuditDeleted AuditFindingKind = "deleted"
	// AuditCheckpointBad: a checkpoint's MAC is wrong, or the chain of
	// checkpoints has a gap or a break.
	AuditCheckpointBad AuditFindingKind = "checkpoint"
	// AuditMarkBad: a retention or erasure mark's MAC is wrong; it is
	// ignored.
	AuditMarkBad AuditFindingKind = "mark"
	// AuditStale: the newest checkpoint is older than the report's
	// staleness bound: sealing stopped, or the newest checkpoints (and
	// with them the newest rows) were deleted.
	AuditStale AuditFindingKind = "stale"
)

// AuditFinding is one thing VerifyAudit found wrong.
type AuditFinding struct {
	Kind AuditFindingKind
	// RowID and UserID name the row when it is still there.
	RowID, UserID string
	// CreatedAt is the row's time (of a deleted row: as sealed).
	CreatedAt time.Time
	// Checkpoint is the number of the checkpoint concerned, 0 for none.
	Checkpoint int64
	Detail     string
}

func (f AuditFinding) String() string {
	s := string(f.Kind)
	if f.Checkpoint != 0 {
		s += fmt.Sprintf(" checkpoint=%d", f.Checkpoint)
	}
	if f.RowID != "" {
		s += fmt.Sprintf(" id=%s user=%s", f.RowID, f.UserID)
	}
	if !f.CreatedAt.IsZero() {
		s += " created_at=" + f.CreatedAt.UTC().Format(time.RFC3339Nano)
	}
	return s + ": " + f.Detail
}

// AuditReport is what VerifyAudit found.
type AuditReport struct {
	Findings []AuditFinding
	// Checkpoints is the number of checkpoints checked; SealedUntil the
	// end of the newest one's window.
	Checkpoints int64
	SealedUntil time.Time
	// Verified counts the rows whose MAC and checkpoint entry match.
	Verified int64
	// SealedLate counts the rows written without a MAC (by an older
	// release during a rolling upgrade, before the key was loaded, or by
	// SQL before the sealer saw them) that a checkpoint sealed: they are
	// protected from their sealing on, not before. LateRowIDs names them
	// (the first 100).
	SealedLate int64
	LateRowIDs []string
	// Committed late: rows with a valid MAC that committed after their
	// window was sealed: genuine, but nothing detects their deletion.
	CommittedLate int64
	// Unsealed counts the rows newer than the newest checkpoint, whose
	// MACs were checked (UnsealedNoMAC of them have none).
	Unsealed, UnsealedNoMAC int64
	// Retained and Erased count the sealed rows gone under a retention
	// or an erasure mark; RetainedBefore is the newest retention time.
	Retained, Erased int64
	RetainedBefore   time.Time
}

// VerifyOptions tunes VerifyAudit.
type VerifyOptions struct {
	// Now is the clock for staleness; default time.Now.
	Now func() time.Time
	// StaleAfter, when positive, reports AuditStale when the newest
	// checkpoint's window ended longer ago than this.
	StaleAfter time.Duration
}

// auditEndOfTime is later than any row: the end of the unsealed range.
var auditEndOfTime = time.Date(9999, time.December, 31, 0, 0, 0, 0, time.UTC)

// verifyPage is how many checkpoints VerifyAudit reads at a time.
const verifyPage = 100

// VerifyAudit checks every audit row against its MAC and its checkpoint,
// the checkpoints against their chain, and reports what is wrong: a row
// edited, inserted, deleted or moved in time, a checkpoint or mark
// edited or deleted. It returns an error only when it could not read.
func VerifyAudit(ctx context.Context, store AuditSealStore, key *AuditKey, opts VerifyOptions) (*AuditReport, error) {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	r := &AuditReport{}
	v := &verifier{key: key, r: r, erased: map[auditTag]int{}}
	if err := v.readMarks(ctx, store); err != nil {
		return nil, err
	}
	var prev *AuditCheckpoint
	first := true
	for after := int64(0); ; {
		cps, err := store.AuditCheckpoints(ctx, after, verifyPage)
		if err != nil {
			return nil, err
		}
		for i := range cps {
			cp := &cps[i]
			if first {
				first = false
				if err := v.checkBefore(ctx, store, cp.From); err != nil {
					return nil, err
				}
			}
			v.checkChain(prev, cp)
			if err := v.checkWindow(ctx, store, cp); err != nil {
				return nil, err
			}
			prev, after = cp, cp.N
			r.Checkpoints++
		}
		if len(cps) < verifyPage {
			break
		}
	}
	tail := time.Time{}
	if prev != nil {
		tail, r.SealedUntil = prev.To, prev.To
		if opts.StaleAfter > 0 && opts.Now().Sub(prev.To) > opts.StaleAfter {
			v.find(AuditFinding{Kind: AuditStale, Checkpoint: prev.N,
				Detail: fmt.Sprintf("the newest checkpoint ends at %s, longer than %s ago: sealing stopped, or the newest checkpoints and rows were deleted", prev.To.UTC().Format(time.RFC3339), opts.StaleAfter)})
		}
	}
	if err := v.checkUnsealed(ctx, store, tail); err != nil {
		return nil, err
	}
	return r, nil
}

type verifier struct {
	key    *AuditKey
	r      *AuditReport
	erased map[auditTag]int
}

func (v *verifier) find(f AuditFinding) { v.r.Findings = append(v.r.Findings, f) }

func (v *verifier) readMarks(ctx context.Context, store AuditMarkStore) error {
	marks, err := store.AuditMarks(ctx)
	if err != nil {
		return err
	}
	for i := range marks {
		m := &marks[i]
		if !hmac.Equal(m.MAC, v.key.markMAC(m)) {
			v.find(AuditFinding{Kind: AuditMarkBad, Detail: fmt.Sprintf("%s mark %s does not match its MAC: ignored", m.Kind, m.ID)})
			continue
		}
		switch m.Kind {
		case AuditMarkRetention:
			if m.Before.After(v.r.RetainedBefore) {
				v.r.RetainedBefore = m.Before
			}
		case AuditMarkErasure:
			tags, err := decodeEntries(m.Entries, 0)
			if err != nil {
				v.find(AuditFinding{Kind: AuditMarkBad, Detail: fmt.Sprintf("erasure mark %s: %v", m.ID, err)})
				continue
			}
			for _, t := range tags {
				v.erased[t.auditTag]++
			}
		}
	}
	return nil
}

// checkBefore reports the rows older than the first checkpoint that no
// retention accounts for: the first checkpoint starts at the oldest row,
// so such a row was inserted later.
func (v *verifier) checkBefore(ctx context.Context, store AuditRowReader, from time.Time) error {
	return eachAuditRow(ctx, store, AuditRange{From: time.Unix(0, 0), To: from}, func(e *AuditEntry) {
		v.find(AuditFinding{Kind: AuditForged, RowID: e.ID, UserID: e.UserID, CreatedAt: e.CreatedAt,
			Detail: "the row is older than the first checkpoint, which started at the oldest row"})
	})
}

func (v *verifier) checkChain(prev, cp *AuditCheckpoint) {
	if !hmac.Equal(cp.MAC, v.key.checkpointMAC(cp)) {
		v.find(AuditFinding{Kind: AuditCheckpointBad, Checkpoint: cp.N, Detail: cp.String() + " does not match its MAC"})
	}
	switch {
	case prev == nil && cp.N != 1 && !cp.From.After(v.r.RetainedBefore):
		// Checkpoints before it went with their rows, by retention.
	case prev == nil && cp.N != 1:
		v.find(AuditFinding{Kind: AuditCheckpointBad, Checkpoint: cp.N, Detail: fmt.Sprintf("checkpoints 1 to %d are missing", cp.N-1)})
	case prev == nil:
	case cp.N != prev.N+1:
		v.find(AuditFinding{Kind: AuditCheckpointBad, Checkpoint: cp.N, Detail: fmt.Sprintf("checkpoints %d to %d are missing", prev.N+1, cp.N-1)})
	case !cp.From.Equal(prev.To) || !hmac.Equal(cp.PrevMAC, prev.MAC):
		v.find(AuditFinding{Kind: AuditCheckpointBad, Checkpoint: cp.N, Detail: cp.String() + " does not follow checkpoint " + fmt.Sprint(prev.N)})
	}
}

func (v *verifier) checkWindow(ctx context.Context, store AuditRowReader, cp *AuditCheckpoint) error {
	entries, err := decodeEntries(cp.Entries, cp.From.UnixMicro())
	if err != nil {
		v.find(AuditFinding{Kind: AuditCheckpointBad, Checkpoint: cp.N, Detail: cp.String() + ": " + err.Error()})
	}
	sealed := make(map[auditTag][]int, len(entries))
	for i, e := range entries {
		sealed[e.auditTag] = append(sealed[e.auditTag], i)
	}
	used := make([]bool, len(entries))
	take := func(t auditTag, late bool) bool {
		for _, i := range sealed[t] {
			if !used[i] && entries[i].late == late {
				used[i] = true
				return true
			}
		}
		return false
	}
	err = eachAuditRow(ctx, store, AuditRange{From: cp.From, To: cp.To}, func(e *AuditEntry) {
		finding := AuditFinding{RowID: e.ID, UserID: e.UserID, CreatedAt: e.CreatedAt, Checkpoint: cp.N}
		if e.MAC == nil {
			if take(tagOf(e.CreatedAt, v.key.rowMAC(labelAuditRowLate, e)), true) {
				v.r.SealedLate++
				if len(v.r.LateRowIDs) < 100 {
					v.r.LateRowIDs = append(v.r.LateRowIDs, e.ID)
				}
				return
			}
			finding.Kind, finding.Detail = AuditForged, "a row without a MAC that its checkpoint did not seal (or sealed with other fields)"
			v.find(finding)
			return
		}
		valid := hmac.Equal(e.MAC, v.key.RowMAC(e))
		tag := tagOf(e.CreatedAt, e.MAC)
		inCheckpoint := take(tag, false)
		switch {
		case valid && inCheckpoint:
			v.r.Verified++
		case valid && len(sealed[tag]) > 0:
			// Its entry went to an identical row: a copy, which only a
			// writer who dropped the primary key can insert.
			finding.Kind, finding.Detail = AuditForged, "a second copy of a sealed row"
			v.find(finding)
		case valid:
			v.r.CommittedLate++
		case inCheckpoint:
			finding.Kind, finding.Detail = AuditModified, "the row's fields no longer match its MAC"
			v.find(finding)
		default:
			finding.Kind, finding.Detail = AuditForged, "the row's MAC is wrong and its checkpoint did not seal it"
			v.find(finding)
		}
	})
	if err != nil {
		return err
	}
	for i, e := range entries {
		if used[i] {
			continue
		}
		created := time.UnixMicro(e.micros).UTC()
		switch {
		case created.Before(v.r.RetainedBefore):
			v.r.Retained++
		case v.erased[e.auditTag] > 0:
			v.erased[e.auditTag]--
			v.r.Erased++
		default:
			v.find(AuditFinding{Kind: AuditDeleted, CreatedAt: created, Checkpoint: cp.N,
				Detail: fmt.Sprintf("a row sealed with MAC tag %s is gone", hex.EncodeToString(e.tag[:]))})
		}
	}
	return nil
}

// checkUnsealed checks the MACs of the rows newer than the newest
// checkpoint (from, zero when there is none).
func (v *verifier) checkUnsealed(ctx context.Context, store AuditRowReader, from time.Time) error {
	if from.IsZero() {
		from = time.Unix(0, 0)
	}
	return eachAuditRow(ctx, store, AuditRange{From: from, To: auditEndOfTime}, func(e *AuditEntry) {
		v.r.Unsealed++
		switch {
		case e.MAC == nil:
			v.r.UnsealedNoMAC++
		case !hmac.Equal(e.MAC, v.key.RowMAC(e)):
			v.find(AuditFinding{Kind: AuditForged, RowID: e.ID, UserID: e.UserID, CreatedAt: e.CreatedAt,
				Detail: "the row's MAC is wrong (not sealed yet)"})
		}
	})
}

// eachAuditRow calls fn for every row r selects, page by page.
func eachAuditRow(ctx context.Context, store AuditRowReader, r AuditRange, fn func(*AuditEntry)) error {
	r.Limit = 5000
	for {
		rows, err := store.AuditRows(ctx, r)
		if err != nil {
			return err
		}
		for i := range rows {
			fn(&rows[i])
		}
		if len(rows) < r.Limit {
			return nil
		}
		last := rows[len(rows)-1]
		r.After = &AuditCursor{CreatedAt: last.CreatedAt, ID: last.ID}
	}
}
