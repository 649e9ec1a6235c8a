package broker

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"time"
)

// This file holds the operations a trusted service (the auth service)
// calls about one user, for the GDPR rights of access and erasure. They
// never touch key material: metadata and audit rows are read, and erasure
// deletes the wraps without opening them.

// VaultMeta is what a data export reports about a user's vault: when and
// how it is protected, never anything derived from the key (not even the
// key check value).
type VaultMeta struct {
	Exists          bool
	ZeroKnowledge   bool
	HasServerWrap   bool
	HasRecoveryWrap bool
	KEKID           string // empty when Exists is false
	FormatVersion   int    // 0 when Exists is false
	CreatedAt       *time.Time
	RotatedAt       *time.Time
	RecoverySetAt   *time.Time
	AuditRows       int64
	// HasRestorableRecoveryWrap reports a recovery wrap kept for the
	// operator to restore (RestoreRecoveryWrap), taken at
	// RestorableTakenAt.
	HasRestorableRecoveryWrap bool
	RestorableTakenAt         *time.Time
	// Grants are the mission grants issued to the user's workers, newest
	// first, at most MaxExportedGrants; GrantsTruncated reports older
	// ones left out (the audit rows hold them all).
	Grants          []GrantRecord
	GrantsTruncated bool
}

// AuditQuery selects audit rows of one action and status
// (AdminStore.AuditByAction).
type AuditQuery struct {
	Action Action
	Status int
	Limit  int
}

// AuditCursor names the last row of an audit page; the next page starts
// after it. It is sent to clients as an opaque string (Encode).
type AuditCursor struct {
	CreatedAt time.Time
	ID        string
}

// cursorWire is the JSON inside an encoded cursor.
type cursorWire struct {
	T time.Time `json:"t"`
	I string    `json:"i"`
}

// Encode returns the cursor as an opaque URL-safe string.
func (c AuditCursor) Encode() string {
	raw, _ := json.Marshal(cursorWire{T: c.CreatedAt.UTC(), I: c.ID})
	return base64.RawURLEncoding.EncodeToString(raw)
}

// ParseAuditCursor decodes a string made by AuditCursor.Encode. Anything
// else is ErrInvalidArgument.
func ParseAuditCursor(s string) (*AuditCursor, error) {
	raw, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(raw) > 512 {
		return nil, fmt.Errorf("%w: malformed cursor", ErrInvalidArgument)
	}
	var w cursorWire
	if err := json.Unmarshal(raw, &w); err != nil || w.I == "" || w.T.IsZero() {
		return nil, fmt.Errorf("%w: malformed cursor", ErrInvalidArgument)
	}
	return &AuditCursor{CreatedAt: w.T, ID: w.I}, nil
}

// AuditPageResult is one page of a user's audit rows. Next is nil on the
// last page.
type AuditPageResult struct {
	Entries []AuditEntry
	Next    *AuditCursor
}

// EraseResult reports what an erasure deleted. Both zero means there was
// nothing left to delete: erasure is idempotent.
type EraseResult struct {
	VaultDeleted     bool
	AuditRowsDeleted int64
}

// Bounds of AuditPage's limit.
const (
	DefaultAuditPageSize = 100
	MaxAuditPageSize     = 1000
)

func checkUserID(userID string) error {
	if userID == "" {
		return fmt.Errorf("%w: empty user id", ErrInvalidArgument)
	}
	return nil
}

// VaultMeta reports the user's vault metadata for a data export, with
// the mission grants issued (read from their audit rows). A user without
// a vault gets Exists false (and may still have audit rows). It
// writes no audit row: the caller is a service, not the user. It returns
// ErrInvalidArgument for an empty user id, or an *UnavailableError.
func (s *Service) VaultMeta(ctx context.Context, userID string) (*VaultMeta, error) {
	if err := checkUserID(userID); err != nil {
		return nil, err
	}
	v, auditRows, err := s.store.VaultMeta(ctx, userID)
	if err != nil {
		return nil, err
	}
	meta := &VaultMeta{AuditRows: auditRows}
	if meta.Grants, meta.GrantsTruncated, err = s.grantRecords(ctx, userID); err != nil {
		return nil, err
	}
	if v != nil {
		created := v.CreatedAt
		meta.Exists = true
		meta.ZeroKnowledge = v.ZeroKnowledge
		meta.HasServerWrap = v.WrappedMK != nil
		meta.HasRecoveryWrap = v.RecoveryWrappedMK != nil
		meta.KEKID = v.KEKID
		meta.FormatVersion = v.FormatVersion
		meta.CreatedAt = &created
		meta.RotatedAt = v.RotatedAt
		meta.RecoverySetAt = v.RecoverySetAt
		if v.Restorable != nil {
			taken := v.Restorable.TakenAt
			meta.HasRestorableRecoveryWrap = true
			meta.RestorableTakenAt = &taken
		}
	}
	return meta, nil
}

// AuditPage returns up to limit (DefaultAuditPageSize when 0) of the
// user's audit rows, oldest first, starting after cursor (an Encode
// string; empty for the first page). It returns ErrInvalidArgument for an
// empty user id, a malformed cursor or a limit outside
// [1, MaxAuditPageSize], or an *UnavailableError.
func (s *Service) AuditPage(ctx context.Context, userID, cursor string, limit int) (*AuditPageResult, error) {
	if err := checkUserID(userID); err != nil {
		return nil, err
	}
	if limit == 0 {
		limit = DefaultAuditPageSize
	}
	if limit < 1 || limit > MaxAuditPageSize {
		return nil, fmt.Errorf("%w: limit must be between 1 and %d", ErrInvalidArgument, MaxAuditPageSize)
	}
	var after *AuditCursor
	if cursor != "" {
		var err error
		if after, err = ParseAuditCursor(cursor); err != nil {
			return nil, err
		}
	}
	// One row more than asked tells whether another page follows without
	// a second query.
	rows, err := s.store.AuditPage(ctx, userID, after, limit+1)
	if err != nil {
		return nil, err
	}
	page := &AuditPageResult{Entries: rows}
	if len(rows) > limit {
		page.Entries = rows[:limit]
		last := rows[limit-1]
		page.Next = &AuditCursor{CreatedAt: last.CreatedAt, ID: last.ID}
	}
	return page, nil
}

// Erase is the right to be forgotten: it deletes the user's vault — the
// only place any wrap of the master key is kept, so the key is shredded —
// and every audit row of the user, in one transaction. It is idempotent
// and writes no audit row (one would name the erased user); with the
// audit key loaded it writes the erasure mark of the deleted rows (their
// times and MAC tags, no user id), so that `keybroker audit verify`
// accepts their absence. It returns ErrInvalidArgument for an empty user
// id, or an *UnavailableError.
func (s *Service) Erase(ctx context.Context, userID string) (EraseResult, error) {
	if err := checkUserID(userID); err != nil {
		return EraseResult{}, err
	}
	var mark EraseMarker
	if key := s.auditSeal.Key(); key != nil {
		mark = func(erased []AuditEntry) *AuditMark { return key.ErasureMark(erased, s.now()) }
	} else if s.auditSeal != nil {
		s.log.WarnContext(ctx, "erasing without an erasure mark: the audit key is not loaded; audit verify will report the erased rows as deleted")
	}
	return s.store.VaultErase(ctx, userID, mark)
}
