package grant_test

import (
	"encoding/base64"
	"errors"
	"math"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/grant"
	"github.com/keybroker/keybroker/internal/testkit/testvectors"
)

func b64(t *testing.T, s string) []byte {
	t.Helper()
	b, err := base64.StdEncoding.DecodeString(s)
	require.NoError(t, err)
	return b
}

// TestDerivationVectors: every WebCrypto vector — the scope as the
// request sent it, in any order — gives the upstream's canonical info
// string and its mission data key.
func TestDerivationVectors(t *testing.T) {
	t.Parallel()
	vectors := testvectors.LoadGrant(t)
	for _, v := range vectors.Vectors {
		t.Run(v.Name, func(t *testing.T) {
			t.Parallel()
			d, err := grant.NewDerivation(v.Derivation.MissionID, v.Derivation.Tables, v.Derivation.RecordIDs)
			require.NoError(t, err)
			require.Equal(t, v.Derivation.Version, d.Version)
			require.Equal(t, v.Info, d.Info())
			mdk, err := grant.DeriveKey(b64(t, v.MasterKey), d)
			require.NoError(t, err)
			require.Equal(t, v.MDK, base64.StdEncoding.EncodeToString(mdk))
			require.NoError(t, d.Canonical(), "a derivation NewDerivation made is canonical")
		})
	}
}

// TestSortIsJavaScriptsNotGos: in the vector whose orders differ, Go's
// byte order would make another info string and another key; the
// package's order is the browser's.
func TestSortIsJavaScriptsNotGos(t *testing.T) {
	t.Parallel()
	v := testvectors.LoadGrant(t).Grant(t, "fixed/sort-is-utf16-order")
	bytewise := slices.Clone(v.Derivation.RecordIDs)
	slices.Sort(bytewise)
	jsOrder := slices.Clone(v.Derivation.RecordIDs)
	grant.SortJS(jsOrder)
	require.NotEqual(t, bytewise, jsOrder, "the vector exercises the difference")
	require.Equal(t, []string{"notes:a", "notes:\U0001F600", "notes:\uff46"}, jsOrder, "a surrogate pair (0xD83D…) sorts before U+FF46")

	d, err := grant.NewDerivation(v.Derivation.MissionID, v.Derivation.Tables, bytewise)
	require.NoError(t, err)
	require.Equal(t, v.Info, d.Info(), "whatever order the request used")

	for _, c := range []struct {
		a, b string
		want int
	}{
		{"", "", 0}, {"", "a", -1}, {"a", "", 1}, {"ab", "a", 1}, {"a", "b", -1},
		{"\uffff", "\U00010000", 1}, {"\ue000", "\U0010FFFF", 1}, {"\ud7ff", "\U00010000", -1},
		{"\U0001F600", "\U0001F601", -1}, {"\U00010400", "\U0001F600", -1}, {"é", "e\u0301", 1},
	} {
		require.Equal(t, c.want, grant.CompareUTF16(c.a, c.b), "%q vs %q", c.a, c.b)
	}
}

// TestDerivationRefusesWhatItCannotDeriveFaithfully: each malformed scope
// is an *InputError naming the field, and none reaches a key.
func TestDerivationRefusesWhatItCannotDeriveFaithfully(t *testing.T) {
	t.Parallel()
	many := func(n int, f func(i int) string) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = f(i)
		}
		return out
	}
	ids := func(n int) []string { return many(n, func(i int) string { return "notes:" + strconv.Itoa(i) }) }
	for _, c := range []struct {
		name      string
		mission   string
		tables    []string
		records   []string
		errSubstr string
	}{
		{"EmptyMission", "", []string{"notes"}, []string{"notes:1"}, "missionId"},
		{"LongMission", strings.Repeat("m", grant.MaxMissionIDBytes+1), []string{"notes"}, []string{"notes:1"}, "missionId is 257 bytes"},
		{"ControlInMission", "m\n1", []string{"notes"}, []string{"notes:1"}, "control character"},
		{"ReplacementCharInMission", "m\uFFFD", []string{"notes"}, []string{"notes:1"}, "U+FFFD"},
		{"InvalidUTF8", "m\xff", []string{"notes"}, []string{"notes:1"}, "UTF-8"},
		{"NoTables", "m", nil, []string{"notes:1"}, "tables must be a non-empty array"},
		{"NoRecords", "m", []string{"notes"}, []string{}, "recordIds must be a non-empty array"},
		{"TooManyRecords", "m", []string{"notes"}, ids(grant.MaxRecordIDs + 1), "at most 1000"},
		{"TooManyTables", "m", many(grant.MaxTables+1, func(i int) string { return "t" + strings.Repeat("x", i) }), []string{"t:1"}, "at most 100"},
		{"EmptyTable", "m", []string{""}, []string{"notes:1"}, "tables[0] is empty"},
		{"CommaInTable", "m", []string{"notes,tasks"}, []string{"notes,tasks:1"}, "tables[0] holds ','"},
		{"ColonInTable", "m", []string{"no:tes"}, []string{"no:tes:1"}, "tables[0] holds"},
		{"RepeatedTable", "m", []string{"notes", "notes"}, []string{"notes:1"}, "tables[1] repeats"},
		{"CommaInRecord", "m", []string{"notes"}, []string{"notes:1,notes:2"}, "recordIds[0] holds ','"},
		{"RecordWithoutTable", "m", []string{"notes"}, []string{"n1"}, "<table>:<id>"},
		{"RecordWithoutID", "m", []string{"notes"}, []string{"notes:"}, "<table>:<id>"},
		{"RecordOfUnlistedTable", "m", []string{"notes"}, []string{"notes:1", "journal:2"}, "recordIds[1] names table \"journal\""},
		{"RepeatedRecord", "m", []string{"notes"}, []string{"notes:1", "notes:1"}, "recordIds[1] repeats"},
		{"LongRecord", "m", []string{"notes"}, []string{"notes:" + strings.Repeat("x", grant.MaxRecordIDBytes)}, "at most 256"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := grant.NewDerivation(c.mission, c.tables, c.records)
			var input *grant.InputError
			require.True(t, errors.As(err, &input), "%v", err)
			require.Contains(t, err.Error(), c.errSubstr)
		})
	}
	// The limits themselves pass.
	_, err := grant.NewDerivation(strings.Repeat("m", grant.MaxMissionIDBytes), []string{"notes"}, ids(grant.MaxRecordIDs))
	require.NoError(t, err)
}

// TestNewDerivationCopiesItsInput: sorting never reorders the caller's
// slices.
func TestNewDerivationCopiesItsInput(t *testing.T) {
	t.Parallel()
	tables, records := []string{"tasks", "notes"}, []string{"tasks:1", "notes:1"}
	d, err := grant.NewDerivation("m", tables, records)
	require.NoError(t, err)
	require.Equal(t, []string{"tasks", "notes"}, tables)
	require.Equal(t, []string{"tasks:1", "notes:1"}, records)
	require.Equal(t, []string{"notes", "tasks"}, d.Tables)
	require.True(t, d.Covers("tasks:1"))
	require.False(t, d.Covers("tasks:2"))
}

// TestCanonicalRefusesAReorderedOrForeignDerivation: a worker can tell a
// derivation the server made from one edited after it.
func TestCanonicalRefusesAReorderedOrForeignDerivation(t *testing.T) {
	t.Parallel()
	d, err := grant.NewDerivation("m", []string{"notes", "tasks"}, []string{"notes:1", "tasks:1"})
	require.NoError(t, err)
	reordered := d
	reordered.Tables = []string{"tasks", "notes"}
	require.ErrorContains(t, reordered.Canonical(), "canonical order")
	v2 := d
	v2.Version = "v2"
	require.ErrorContains(t, v2.Canonical(), "version")
	_, err = grant.DeriveKey(make([]byte, 32), v2)
	require.ErrorContains(t, err, "version")
	_, err = grant.DeriveKey(make([]byte, 31), d)
	require.Error(t, err)
}

// TestScopeDigestIsUnambiguous: scopes that join to the same text under
// a naive encoding have different digests, and the digest of a known
// scope is pinned.
func TestScopeDigestIsUnambiguous(t *testing.T) {
	t.Parallel()
	a := grant.Derivation{Version: "v1", MissionID: "m", Tables: []string{"ab"}, RecordIDs: []string{"ab:c"}}
	b := grant.Derivation{Version: "v1", MissionID: "m", Tables: []string{"a"}, RecordIDs: []string{"bab:c"}}
	require.NotEqual(t, a.ScopeDigest(), b.ScopeDigest())
	d, err := grant.NewDerivation("mission-abc", []string{"tasks", "notes"}, []string{"tasks:t1", "notes:n1"})
	require.NoError(t, err)
	require.Equal(t, "sha256:yet3qM6zrKy898XnxLcH1EYTDLKEdplLpz696MGyxnw", d.ScopeDigestString())
}

// TestLifetimeClampsAsTheUpstream: no ttl is 7 days; anything else is
// clamped to [1 h, 30 d] in whole milliseconds, extremes included.
func TestLifetimeClampsAsTheUpstream(t *testing.T) {
	t.Parallel()
	f := func(v float64) *float64 { return &v }
	require.Equal(t, 7*24*time.Hour, grant.Lifetime(nil))
	require.Equal(t, time.Hour, grant.Lifetime(f(0)))
	require.Equal(t, time.Hour, grant.Lifetime(f(-5)))
	require.Equal(t, time.Hour, grant.Lifetime(f(math.Inf(-1))))
	require.Equal(t, 2*time.Hour+time.Millisecond, grant.Lifetime(f(7_200_001.9)))
	require.Equal(t, 30*24*time.Hour, grant.Lifetime(f(1e300)))
	require.Equal(t, 30*24*time.Hour, grant.Lifetime(f(math.Inf(1))))
	require.Equal(t, 7*24*time.Hour, grant.Lifetime(f(math.NaN())))

	now := time.Date(2026, 5, 1, 10, 0, 0, 123_456_789, time.FixedZone("x", 3600))
	terms := grant.NewTerms(grant.Derivation{}, now, f(3_600_000))
	require.Equal(t, time.Date(2026, 5, 1, 9, 0, 0, 123_000_000, time.UTC), terms.IssuedAt)
	require.Equal(t, terms.IssuedAt.Add(time.Hour), terms.ExpiresAt)
}
