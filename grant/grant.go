// Package grant is the wire format of mission grants: a user lets a
// background worker (an AI "mission" runner) decrypt a chosen set of
// records while the user's browser is closed. The server derives a
// mission data key from the user's master key, bound to the scope
// (Derivation, DeriveKey), and wraps it to the worker's public key
// (Recipient.Wrap); only that worker opens it (PrivateKey.Unwrap).
//
// The derivation is the upstream mana-auth service's, byte for byte:
// HKDF-SHA256 with the 32-byte master key as input key material, the
// UTF-8 missionId as salt and the canonical scope string (Info) as info.
// Wraps are RSA-OAEP (SHA-256, WebCrypto's {name: "RSA-OAEP", hash:
// "SHA-256"}) or HPKE (RFC 9180) with X25519 or the hybrid ML-KEM-768 +
// X25519 KEM; every wrap to a named recipient is bound to its terms —
// the derivation, the recipient and the lifetime — so that it opens
// under no other (BindingInfo). docs/grants.md describes the formats.
//
// The package uses the standard library only: the worker imports it
// (through grant/worker) without the server's dependencies.
package grant

import (
	"cmp"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"
)

// Version is the derivation version this package makes and opens.
const Version = "v1"

// KeySize is the length in bytes of a master key and of a mission data
// key.
const KeySize = 32

// Limits of a grant's scope. The upstream contract caps recordIds at
// 1 000; the byte limits are keybroker's, generous for the ids a client
// makes ("<table>:<uuid>").
const (
	MaxMissionIDBytes = 256
	MaxTables         = 100
	MaxTableBytes     = 128
	MaxRecordIDs      = 1000
	MaxRecordIDBytes  = 256
)

// Lifetimes: a requested lifetime is clamped to [MinTTL, MaxTTL];
// without one a grant lives DefaultTTL. The upstream's values.
const (
	MinTTL     = time.Hour
	MaxTTL     = 30 * 24 * time.Hour
	DefaultTTL = 7 * 24 * time.Hour
)

// infoPrefix starts the upstream's canonical scope string.
const infoPrefix = "mana-ai-mission-grant:"

// InputError is a scope or request the grant contract refuses. Its text
// names the field and holds nothing secret: it may be shown to the
// client as it is.
type InputError struct{ msg string }

func (e *InputError) Error() string { return e.msg }

func inputErrorf(format string, args ...any) error {
	return &InputError{msg: fmt.Sprintf(format, args...)}
}

// Derivation is the scope a mission data key is derived for: the
// version, the mission and the tables and records it may read, both
// lists in the canonical order (SortJS).
type Derivation struct {
	Version   string
	MissionID string
	Tables    []string
	RecordIDs []string
}

// NewDerivation validates a requested scope and returns its derivation
// (version Version) with copies of the lists in the canonical order. It
// returns an *InputError when:
//   - missionId is empty or over MaxMissionIDBytes;
//   - tables or recordIds is empty, or longer than MaxTables or
//     MaxRecordIDs, or holds an empty, over-long or repeated entry;
//   - a string holds a control character or U+FFFD (the replacement
//     character, which a lone UTF-16 surrogate or invalid UTF-8 becomes
//     when decoded, and which would then sort and derive differently from
//     the client's string);
//   - a table holds ',' or ':', or a record id holds ',' (the canonical
//     string joins the lists with ',': an entry holding one would derive
//     the same key as two entries);
//   - a record id is not "<table>:<id>" with a non-empty id and a table
//     listed in tables.
func NewDerivation(missionID string, tables, recordIDs []string) (Derivation, error) {
	if missionID == "" {
		return Derivation{}, inputErrorf("missionId must be a non-empty string")
	}
	if err := checkText("missionId", missionID, MaxMissionIDBytes); err != nil {
		return Derivation{}, err
	}
	if len(tables) == 0 {
		return Derivation{}, inputErrorf("tables must be a non-empty array of strings")
	}
	if len(tables) > MaxTables {
		return Derivation{}, inputErrorf("tables holds %d entries; at most %d", len(tables), MaxTables)
	}
	if len(recordIDs) == 0 {
		return Derivation{}, inputErrorf("recordIds must be a non-empty array of strings")
	}
	if len(recordIDs) > MaxRecordIDs {
		return Derivation{}, inputErrorf("recordIds holds %d entries; at most %d", len(recordIDs), MaxRecordIDs)
	}
	listed := make(map[string]bool, len(tables))
	for i, table := range tables {
		name := fmt.Sprintf("tables[%d]", i)
		if table == "" {
			return Derivation{}, inputErrorf("%s is empty", name)
		}
		if err := checkText(name, table, MaxTableBytes); err != nil {
			return Derivation{}, err
		}
		if strings.ContainsAny(table, ",:") {
			return Derivation{}, inputErrorf("%s holds ',' or ':', which the scope string uses as separators", name)
		}
		if listed[table] {
			return Derivation{}, inputErrorf("%s repeats %q", name, table)
		}
		listed[table] = true
	}
	seen := make(map[string]bool, len(recordIDs))
	for i, id := range recordIDs {
		name := fmt.Sprintf("recordIds[%d]", i)
		if err := checkText(name, id, MaxRecordIDBytes); err != nil {
			return Derivation{}, err
		}
		if strings.Contains(id, ",") {
			return Derivation{}, inputErrorf("%s holds ',', which the scope string uses as a separator", name)
		}
		table, rest, ok := strings.Cut(id, ":")
		if !ok || table == "" || rest == "" {
			return Derivation{}, inputErrorf("%s must be written \"<table>:<id>\"", name)
		}
		if !listed[table] {
			return Derivation{}, inputErrorf("%s names table %q, which tables does not list", name, table)
		}
		if seen[id] {
			return Derivation{}, inputErrorf("%s repeats an earlier record id", name)
		}
		seen[id] = true
	}
	d := Derivation{Version: Version, MissionID: missionID, Tables: slices.Clone(tables), RecordIDs: slices.Clone(recordIDs)}
	SortJS(d.Tables)
	SortJS(d.RecordIDs)
	return d, nil
}

// checkText refuses a string over max bytes, invalid UTF-8, a control
// character or U+FFFD.
func checkText(name, s string, max int) error {
	if len(s) > max {
		return inputErrorf("%s is %d bytes; at most %d", name, len(s), max)
	}
	if !utf8.ValidString(s) {
		return inputErrorf("%s is not valid UTF-8", name)
	}
	for _, r := range s {
		if unicode.IsControl(r) {
			return inputErrorf("%s holds a control character", name)
		}
		if r == utf8.RuneError {
			return inputErrorf("%s holds U+FFFD (a lone surrogate or invalid UTF-8 in the request)", name)
		}
	}
	return nil
}

// Canonical reports whether d is what NewDerivation makes of its own
// fields: the current version, a valid scope, lists in canonical order.
// A worker checks a grant it received with it.
func (d Derivation) Canonical() error {
	if d.Version != Version {
		return inputErrorf("derivation version %q: this package knows %q", d.Version, Version)
	}
	c, err := NewDerivation(d.MissionID, d.Tables, d.RecordIDs)
	if err != nil {
		return err
	}
	if !slices.Equal(c.Tables, d.Tables) || !slices.Equal(c.RecordIDs, d.RecordIDs) {
		return inputErrorf("derivation lists are not in canonical order")
	}
	return nil
}

// SortJS sorts s in place as JavaScript's default Array.prototype.sort
// does: by UTF-16 code units. It differs from Go's byte order where a
// character above U+FFFF (a surrogate pair in UTF-16, 0xD800–0xDFFF)
// meets one in U+E000–U+FFFF: UTF-16 puts the pair first.
func SortJS(s []string) { slices.SortFunc(s, CompareUTF16) }

// CompareUTF16 compares a and b by their UTF-16 code units, as
// JavaScript's < does on strings.
func CompareUTF16(a, b string) int {
	for a != "" && b != "" {
		ra, na := utf8.DecodeRuneInString(a)
		rb, nb := utf8.DecodeRuneInString(b)
		if ra != rb {
			return cmp.Compare(utf16Units(ra), utf16Units(rb))
		}
		a, b = a[na:], b[nb:]
	}
	return cmp.Compare(len(a), len(b))
}

// utf16Units orders one character by its UTF-16 encoding: the first code
// unit in the high half, the second (of a surrogate pair) in the low.
func utf16Units(r rune) uint32 {
	if r < 0x10000 {
		return uint32(r) << 16
	}
	hi, lo := utf16.EncodeRune(r)
	return uint32(hi)<<16 | uint32(lo)
}

// Info is the upstream's canonical scope string, the HKDF info:
// "mana-ai-mission-grant:" + version + ":tables=" + tables joined by ","
// + ":ids=" + record ids joined by ",". d's lists must be in canonical
// order (NewDerivation).
func (d Derivation) Info() string {
	return infoPrefix + d.Version + ":tables=" + strings.Join(d.Tables, ",") + ":ids=" + strings.Join(d.RecordIDs, ",")
}

// DeriveKey returns the mission data key of d under the master key mk:
// HKDF-SHA256(ikm = mk, salt = UTF-8 missionId, info = d.Info()), 32
// bytes. The caller wipes it when done.
func DeriveKey(mk []byte, d Derivation) ([]byte, error) {
	if len(mk) != KeySize {
		return nil, fmt.Errorf("grant: master key is %d bytes, want %d", len(mk), KeySize)
	}
	if d.Version != Version {
		return nil, fmt.Errorf("grant: derivation version %q: this package knows %q", d.Version, Version)
	}
	return hkdf.Key(sha256.New, mk, []byte(d.MissionID), d.Info(), KeySize)
}

// scopeDigestLabel starts the input of ScopeDigest.
const scopeDigestLabel = "keybroker mission grant scope v1\x00"

// ScopeDigest is a SHA-256 of d's tables and record ids, unambiguously
// encoded: the label "keybroker mission grant scope v1" and a zero byte,
// then uint32be(len(tables)) and each table as uint32be(len) ‖ bytes,
// then the same for the record ids, both in canonical order. It names a
// scope in the audit trail and binds it into a wrap without copying it.
func (d Derivation) ScopeDigest() [sha256.Size]byte {
	h := sha256.New()
	h.Write([]byte(scopeDigestLabel))
	for _, list := range [][]string{d.Tables, d.RecordIDs} {
		h.Write(binary.BigEndian.AppendUint32(nil, uint32(len(list))))
		for _, s := range list {
			h.Write(lengthPrefixed(nil, []byte(s)))
		}
	}
	var sum [sha256.Size]byte
	h.Sum(sum[:0])
	return sum
}

// ScopeDigestString is ScopeDigest as the audit trail and the data
// export write it: "sha256:" and the digest in unpadded base64url.
func (d Derivation) ScopeDigestString() string {
	sum := d.ScopeDigest()
	return "sha256:" + base64.RawURLEncoding.EncodeToString(sum[:])
}

// Covers reports whether recordID is one of d's record ids.
func (d Derivation) Covers(recordID string) bool {
	_, found := slices.BinarySearchFunc(d.RecordIDs, recordID, CompareUTF16)
	return found
}

// Terms are what a grant says: the derivation and its lifetime.
type Terms struct {
	Derivation Derivation
	IssuedAt   time.Time
	ExpiresAt  time.Time
}

// NewTerms returns the terms of a grant of d issued at now: the times
// in whole milliseconds (what the ISO strings of the wire carry) and the
// lifetime from Lifetime(ttlMillis).
func NewTerms(d Derivation, now time.Time, ttlMillis *float64) Terms {
	issued := now.UTC().Truncate(time.Millisecond)
	return Terms{Derivation: d, IssuedAt: issued, ExpiresAt: issued.Add(Lifetime(ttlMillis))}
}

// Lifetime is a requested lifetime in milliseconds (nil: none) as the
// upstream turned it into one: DefaultTTL without one, else clamped to
// [MinTTL, MaxTTL] and cut to whole milliseconds. Clamping comes first,
// so any finite number is safe.
func Lifetime(ttlMillis *float64) time.Duration {
	if ttlMillis == nil || math.IsNaN(*ttlMillis) { // JSON has no NaN; a caller might
		return DefaultTTL
	}
	ms := min(max(*ttlMillis, float64(MinTTL.Milliseconds())), float64(MaxTTL.Milliseconds()))
	return time.Duration(int64(ms)) * time.Millisecond
}

// lengthPrefixed appends uint32be(len(b)) ‖ b to dst.
func lengthPrefixed(dst, b []byte) []byte {
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(b)))
	return append(dst, b...)
}
