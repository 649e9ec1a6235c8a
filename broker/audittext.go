package broker

import (
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// MaxAuditText is the most bytes an audit row keeps of each text a
// request brings (ip_address, user_agent) and of its context note.
const MaxAuditText = 512

// AuditText is s as an audit row holds it: valid UTF-8 without control
// characters, at most MaxAuditText bytes, cut on a character boundary.
//
// Every byte that is not part of a valid UTF-8 sequence and every control
// character (C0, DEL and C1, unicode.IsControl; tab included) becomes
// U+FFFD, so the row shows that something was there without holding it:
// no database refuses the row (PostgreSQL refuses invalid UTF-8 and NUL
// in text) and no terminal that shows it runs an escape sequence. The
// cut comes after the replacement and never splits a character.
//
// Headers are the attacker's to choose; this is the domain's rule, so
// every path that writes a request's text into an audit row gets it,
// whatever the HTTP layer did first.
func AuditText(s string) string {
	if isPlainASCII(s) && len(s) <= MaxAuditText {
		return s // the usual User-Agent: no copy
	}
	var b strings.Builder
	b.Grow(min(len(s), MaxAuditText))
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		i += size
		if (r == utf8.RuneError && size == 1) || unicode.IsControl(r) {
			r = utf8.RuneError
		}
		if b.Len()+utf8.RuneLen(r) > MaxAuditText {
			break
		}
		b.WriteRune(r)
	}
	return b.String()
}

// isPlainASCII reports whether s holds only printable ASCII.
func isPlainASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e {
			return false
		}
	}
	return true
}

// auditEntry is the audit row of one request's outcome. Its texts are
// cleaned (AuditText): they come from request headers, or name what a
// row holds.
func (s *Service) auditEntry(userID string, meta RequestMeta, action Action, status int, note string) *AuditEntry {
	return s.auditEntryAt(s.now(), userID, meta, action, status, note)
}

// auditEntryAt is auditEntry's row made at a time its caller chose, its
// MAC computed over that time.
func (s *Service) auditEntryAt(at time.Time, userID string, meta RequestMeta, action Action, status int, note string) *AuditEntry {
	e := new(AuditEntry)
	*e = newAuditEntry(at, userID, meta, action, status, note)
	s.auditSeal.stamp(e)
	return e
}

// newAuditEntry is the entry of a row made at at, without its MAC.
func newAuditEntry(at time.Time, userID string, meta RequestMeta, action Action, status int, note string) AuditEntry {
	return AuditEntry{
		ID:        newAuditID(at),
		UserID:    userID,
		Action:    action,
		IPAddress: AuditText(meta.IPAddress),
		UserAgent: AuditText(meta.UserAgent),
		Context:   AuditText(note),
		Status:    status,
		CreatedAt: at,
	}
}
