package vaultapi

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/go-chi/chi/v5"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/vaultapi/jwtauth"
)

// InternalPath is the prefix of the service routes, which the auth
// service calls with the service key for a user's GDPR requests.
const InternalPath = "/api/v1/internal/users/{userId}/vault"

// ServiceKeyHeader carries the service key.
const ServiceKeyHeader = "X-Service-Key"

// serviceKey checks the X-Service-Key header in constant time: both sides
// are hashed first, so the comparison always runs over 32 bytes and
// neither the key's length nor the position of the first wrong byte shows
// in the time a refusal takes.
type serviceKey struct{ digest [sha256.Size]byte }

func newServiceKey(key string) *serviceKey {
	return &serviceKey{digest: sha256.Sum256([]byte(key))}
}

func (k *serviceKey) matches(got string) bool {
	d := sha256.Sum256([]byte(got))
	return subtle.ConstantTimeCompare(d[:], k.digest[:]) == 1
}

func (a *API) mountService(r chi.Router) {
	r.Group(func(r chi.Router) {
		r.Use(noStore, a.requireServiceKey)
		r.Get(InternalPath, a.serviceHandle(a.vaultMeta))
		r.Get(InternalPath+"/audit", a.serviceHandle(a.vaultAudit))
		r.Delete(InternalPath, a.serviceHandle(a.vaultErase))
		r.Post(InternalPath+"/recovery-wrap/restore", a.serviceHandle(a.restoreRecoveryWrap))
		r.Delete(InternalPath+"/recovery-wrap/restorable", a.serviceHandle(a.discardRestorableRecoveryWrap))
	})
}

// requireServiceKey admits requests that carry the service key. Every
// refusal takes the same path: one hash and one 32-byte comparison.
func (a *API) requireServiceKey(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !a.serviceKey.matches(r.Header.Get(ServiceKeyHeader)) {
			a.log.LogAttrs(r.Context(), slog.LevelWarn, "service key rejected",
				slog.String("request_id", requestID(r.Context())), slog.String("peer", PeerIP(r)))
			a.writeError(w, r, newAPIError(CodeUnauthorized, "missing or invalid service key"))
			return
		}
		next.ServeHTTP(w, r)
	})
}

// serviceHandlerFunc is a service handler: the validated user id in,
// the response body or an error for the one error writer out.
type serviceHandlerFunc func(r *http.Request, userID string) (any, error)

func (a *API) serviceHandle(h serviceHandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), a.timeout)
		defer cancel()
		r = r.WithContext(ctx)
		userID, err := pathUserID(r)
		if err != nil {
			a.writeError(w, r, err)
			return
		}
		body, err := h(r, userID)
		if err != nil {
			a.writeError(w, r, err)
			return
		}
		writeJSON(w, http.StatusOK, body)
	}
}

// pathUserID returns the {userId} path segment, unescaped, if it is what
// a token subject may be (see jwtauth): 1 to 255 bytes of UTF-8 without
// control characters. chi matched the escaped path when the request had
// one, and then the segment is still escaped.
func pathUserID(r *http.Request) (string, error) {
	raw := chi.URLParam(r, "userId")
	id := raw
	if r.URL.RawPath != "" {
		var err error
		if id, err = url.PathUnescape(raw); err != nil {
			return "", badRequest("userId is not a valid user id")
		}
	}
	if !validUserID(id) {
		return "", badRequest("userId is not a valid user id")
	}
	return id, nil
}

func validUserID(id string) bool {
	if id == "" || len(id) > jwtauth.MaxSubjectBytes || !utf8.ValidString(id) {
		return false
	}
	for _, r := range id {
		if unicode.IsControl(r) {
			return false
		}
	}
	return true
}

// vaultMetaResponse is a user's vault metadata for a data export. It has
// no key material and nothing derived from the key.
type vaultMetaResponse struct {
	UserID          string  `json:"userId"`
	VaultExists     bool    `json:"vaultExists"`
	ZeroKnowledge   bool    `json:"zeroKnowledge"`
	HasServerWrap   bool    `json:"hasServerWrap"`
	HasRecoveryWrap bool    `json:"hasRecoveryWrap"`
	KEKID           *string `json:"kekId"`
	FormatVersion   *int    `json:"formatVersion"`
	CreatedAt       *string `json:"createdAt"`
	RotatedAt       *string `json:"rotatedAt"`
	RecoverySetAt   *string `json:"recoverySetAt"`
	AuditRowCount   int64   `json:"auditRowCount"`
	// HasRestorableRecoveryWrap: the server kept a recovery wrap for the
	// operator to restore, at RestorableRecoveryWrapTakenAt.
	HasRestorableRecoveryWrap     bool    `json:"hasRestorableRecoveryWrap"`
	RestorableRecoveryWrapTakenAt *string `json:"restorableRecoveryWrapTakenAt"`
	// MissionGrants are the mission grants issued to the user's workers,
	// newest first; MissionGrantsTruncated reports older ones left out.
	MissionGrants          []missionGrantRecord `json:"missionGrants"`
	MissionGrantsTruncated bool                 `json:"missionGrantsTruncated"`
}

// missionGrantRecord is one issued grant in a data export: what was
// granted to whom and until when, never a key; scopeDigest names the
// scope (docs/grants.md).
type missionGrantRecord struct {
	MissionID   string `json:"missionId"`
	Recipient   string `json:"recipient"`
	Algorithm   string `json:"algorithm"`
	ScopeDigest string `json:"scopeDigest"`
	TableCount  int    `json:"tableCount"`
	RecordCount int    `json:"recordCount"`
	IssuedAt    string `json:"issuedAt"`
	ExpiresAt   string `json:"expiresAt"`
}

func isoTimePtr(t *time.Time) *string {
	if t == nil {
		return nil
	}
	s := isoTime(*t)
	return &s
}

func (a *API) vaultMeta(r *http.Request, userID string) (any, error) {
	m, err := a.svc.VaultMeta(r.Context(), userID)
	if err != nil {
		return nil, err
	}
	resp := vaultMetaResponse{
		UserID: userID, VaultExists: m.Exists, ZeroKnowledge: m.ZeroKnowledge,
		HasServerWrap: m.HasServerWrap, HasRecoveryWrap: m.HasRecoveryWrap,
		CreatedAt: isoTimePtr(m.CreatedAt), RotatedAt: isoTimePtr(m.RotatedAt), RecoverySetAt: isoTimePtr(m.RecoverySetAt),
		AuditRowCount:                 m.AuditRows,
		HasRestorableRecoveryWrap:     m.HasRestorableRecoveryWrap,
		RestorableRecoveryWrapTakenAt: isoTimePtr(m.RestorableTakenAt),
		MissionGrants:                 make([]missionGrantRecord, 0, len(m.Grants)),
		MissionGrantsTruncated:        m.GrantsTruncated,
	}
	for _, g := range m.Grants {
		resp.MissionGrants = append(resp.MissionGrants, missionGrantRecord{
			MissionID: g.MissionID, Recipient: g.Recipient, Algorithm: string(g.Algorithm), ScopeDigest: g.ScopeDigest,
			TableCount: g.Tables, RecordCount: g.Records, IssuedAt: isoTime(g.IssuedAt), ExpiresAt: isoTime(g.ExpiresAt),
		})
	}
	if m.Exists {
		resp.KEKID, resp.FormatVersion = &m.KEKID, &m.FormatVersion
	}
	return resp, nil
}

type auditEntryResponse struct {
	ID        string  `json:"id"`
	Action    string  `json:"action"`
	Status    int     `json:"status"`
	Context   *string `json:"context"`
	IPAddress *string `json:"ipAddress"`
	UserAgent *string `json:"userAgent"`
	CreatedAt string  `json:"createdAt"`
}

type auditPageResponse struct {
	UserID     string               `json:"userId"`
	Entries    []auditEntryResponse `json:"entries"`
	NextCursor *string              `json:"nextCursor"`
}

func nullIfEmpty(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func (a *API) vaultAudit(r *http.Request, userID string) (any, error) {
	q := r.URL.Query()
	limit := 0
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > broker.MaxAuditPageSize {
			return nil, badRequest("limit must be an integer from 1 to " + strconv.Itoa(broker.MaxAuditPageSize))
		}
		limit = n
	}
	cursor := q.Get("cursor")
	if cursor != "" {
		if _, err := broker.ParseAuditCursor(cursor); err != nil {
			return nil, badRequest("cursor is not one this service returned")
		}
	}
	page, err := a.svc.AuditPage(r.Context(), userID, cursor, limit)
	if err != nil {
		return nil, err
	}
	resp := auditPageResponse{UserID: userID, Entries: make([]auditEntryResponse, 0, len(page.Entries))}
	for _, e := range page.Entries {
		resp.Entries = append(resp.Entries, auditEntryResponse{
			ID: e.ID, Action: string(e.Action), Status: e.Status,
			Context: nullIfEmpty(e.Context), IPAddress: nullIfEmpty(e.IPAddress), UserAgent: nullIfEmpty(e.UserAgent),
			CreatedAt: isoTime(e.CreatedAt),
		})
	}
	if page.Next != nil {
		next := page.Next.Encode()
		resp.NextCursor = &next
	}
	return resp, nil
}

type eraseResponse struct {
	OK               bool  `json:"ok"`
	VaultDeleted     bool  `json:"vaultDeleted"`
	AuditRowsDeleted int64 `json:"auditRowsDeleted"`
}

// vaultErase is the right to be forgotten. Its log line says that an
// erasure happened and what it deleted, and nothing that identifies whom:
// the access line has the route pattern, not the path.
func (a *API) vaultErase(r *http.Request, userID string) (any, error) {
	res, err := a.svc.Erase(r.Context(), userID)
	if err != nil {
		return nil, err
	}
	a.log.LogAttrs(r.Context(), slog.LevelInfo, "vault erased",
		slog.String("event", "erase"),
		slog.String("request_id", requestID(r.Context())),
		slog.Bool("vault_deleted", res.VaultDeleted),
		slog.Int64("audit_rows_deleted", res.AuditRowsDeleted))
	return eraseResponse{OK: true, VaultDeleted: res.VaultDeleted, AuditRowsDeleted: res.AuditRowsDeleted}, nil
}

// restoreResponse reports a restore or discard of the restore slot.
type restoreResponse struct {
	OK                bool    `json:"ok"`
	ZeroKnowledge     bool    `json:"zeroKnowledge"`
	RecoverySetAt     *string `json:"recoverySetAt"`
	TakenAt           string  `json:"takenAt"`
	ServerWrapDropped bool    `json:"serverWrapDropped"`
}

// serviceMeta is the audit metadata of a service request: the caller is
// the auth service, acting for the user.
func (a *API) serviceMeta(r *http.Request) broker.RequestMeta {
	return broker.RequestMeta{IPAddress: a.clientIP(r), UserAgent: truncate(r.UserAgent(), 512)}
}

// restoreRecoveryWrap puts back the recovery wrap the server kept before
// an unverifiable change (see broker.Service.RestoreRecoveryWrap).
func (a *API) restoreRecoveryWrap(r *http.Request, userID string) (any, error) {
	res, err := a.svc.RestoreRecoveryWrap(r.Context(), userID, a.serviceMeta(r))
	if err != nil {
		return nil, err
	}
	return restoreResponse{OK: true, ZeroKnowledge: true, RecoverySetAt: isoTimePtr(res.RecoverySetAt),
		TakenAt: isoTime(res.TakenAt), ServerWrapDropped: res.ServerWrapDropped}, nil
}

// discardRestorableRecoveryWrap empties the restore slot.
func (a *API) discardRestorableRecoveryWrap(r *http.Request, userID string) (any, error) {
	res, err := a.svc.DiscardRestorableRecoveryWrap(r.Context(), userID, a.serviceMeta(r))
	if err != nil {
		return nil, err
	}
	return discardResponse{OK: true, RecoverySetAt: isoTimePtr(res.RecoverySetAt), TakenAt: isoTime(res.TakenAt)}, nil
}

// discardResponse reports a discarded restore slot.
type discardResponse struct {
	OK            bool    `json:"ok"`
	RecoverySetAt *string `json:"recoverySetAt"`
	TakenAt       string  `json:"takenAt"`
}
