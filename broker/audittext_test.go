package broker

import (
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/stretchr/testify/require"
)

func TestAuditTextCases(t *testing.T) {
	long := strings.Repeat("a", MaxAuditText-1) + "é"
	for _, c := range []struct{ name, in, want string }{
		{"PlainKept", "Mozilla/5.0 (X11; Linux x86_64)", "Mozilla/5.0 (X11; Linux x86_64)"},
		{"ValidUnicodeKept", "Löwe 🦁 ünd U+FFFD \uFFFD", "Löwe 🦁 ünd U+FFFD \uFFFD"},
		{"InvalidBytesReplaced", "a\xff\xfeb", "a\uFFFD\uFFFDb"},
		{"TruncatedSequenceReplaced", "a\xe2\x82", "a\uFFFD\uFFFD"},
		{"OverlongReplaced", "\xc0\xaf", "\uFFFD\uFFFD"},
		{"SurrogateReplaced", "\xed\xa0\x80", "\uFFFD\uFFFD\uFFFD"},
		{"C0Replaced", "a\x00b\tc\r\nd\x1b[31m", "a\uFFFDb\uFFFDc\uFFFD\uFFFDd\uFFFD[31m"},
		{"DELReplaced", "a\x7fb", "a\uFFFDb"},
		{"C1Replaced", "a\u009b31mb\u0085", "a\uFFFD31mb\uFFFD"},
		{"CutAtLimit", strings.Repeat("x", MaxAuditText+10), strings.Repeat("x", MaxAuditText)},
		{"ExactLimitKept", strings.Repeat("x", MaxAuditText), strings.Repeat("x", MaxAuditText)},
		{"CutOnCharacterBoundary", long, strings.Repeat("a", MaxAuditText-1)},
		{"ReplacementsCountTowardsTheLimit", strings.Repeat("\xff", MaxAuditText), strings.Repeat("\uFFFD", MaxAuditText/3)},
		{"Empty", "", ""},
	} {
		t.Run(c.name, func(t *testing.T) {
			require.Equal(t, c.want, AuditText(c.in))
		})
	}
}

// TestAuditEntryIsClean: every audit row a request produces holds clean
// text, whatever the request metadata.
func TestAuditEntryIsClean(t *testing.T) {
	s := &Service{now: func() (t time.Time) { return }}
	e := s.auditEntry("alice", RequestMeta{IPAddress: "198.51.100.7\x00\xff", UserAgent: "ua\x1b\xc2\x9b\xe2"}, ActionFetch, 200, "note\n")
	require.Equal(t, "198.51.100.7\uFFFD\uFFFD", e.IPAddress)
	require.Equal(t, "ua\uFFFD\uFFFD\uFFFD", e.UserAgent)
	require.Equal(t, "note\uFFFD", e.Context)
}

// FuzzAuditText: the output is valid UTF-8 without control characters,
// at most MaxAuditText bytes, and exactly the longest prefix, cut on a
// character boundary, of the input with every invalid byte and control
// character replaced by U+FFFD.
func FuzzAuditText(f *testing.F) {
	for _, seed := range []string{
		"", "Mozilla/5.0", "\xff", "\xe2\x82", "a\x00b", "\u009b", "\t", "é",
		strings.Repeat("é", MaxAuditText), strings.Repeat("\xff", MaxAuditText+1),
		strings.Repeat("a", MaxAuditText-1) + "\U0001F981",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, in string) {
		out := AuditText(in)
		if !utf8.ValidString(out) {
			t.Fatalf("AuditText(%q) = %q: not valid UTF-8", in, out)
		}
		if len(out) > MaxAuditText {
			t.Fatalf("AuditText(%q) is %d bytes", in, len(out))
		}
		for _, r := range out {
			if unicode.IsControl(r) {
				t.Fatalf("AuditText(%q) = %q holds control character %U", in, out, r)
			}
		}
		// The reference: ranging over a string yields U+FFFD for each
		// byte that is not valid UTF-8.
		var full strings.Builder
		var want string
		for _, r := range in {
			if unicode.IsControl(r) {
				r = utf8.RuneError
			}
			full.WriteRune(r)
			if full.Len() > MaxAuditText {
				break
			}
			want = full.String()
		}
		if out != want {
			t.Fatalf("AuditText(%q) = %q, want %q", in, out, want)
		}
	})
}

// TestAuditIDsSortByTime: an audit id keeps the original service's shape
// (21 characters of the nanoid alphabet) and sorts by the time it was made,
// whatever its random part, so that rows inserted one after another land
// next to each other in the primary key index. Its time digits (0-9a-v)
// sort the same under every collation.
func TestAuditIDsSortByTime(t *testing.T) {
	shape := regexp.MustCompile(`^[A-Za-z0-9_-]{21}$`)
	start := time.Date(2026, 12, 7, 23, 59, 59, 0, time.UTC)
	var ids []string
	for i := range 2000 {
		id := newAuditID(start.Add(time.Duration(i*i) * time.Millisecond))
		require.Regexp(t, shape, id)
		ids = append(ids, id)
	}
	require.True(t, slices.IsSorted(ids), "byte order follows time")
	require.NotEqual(t, newAuditID(start), newAuditID(start), "the same millisecond, different ids")
	require.Equal(t, newAuditID(start)[:10], newAuditID(start.Add(999 * time.Microsecond))[:10], "the time part is the millisecond")
	for _, at := range []time.Time{time.Unix(0, 0), time.Unix(1<<40, 0), time.Date(1960, 1, 1, 0, 0, 0, 0, time.UTC)} {
		require.Regexp(t, shape, newAuditID(at))
	}
	require.Equal(t, "0000000000", newAuditID(time.Date(1960, 1, 1, 0, 0, 0, 0, time.UTC))[:10], "before 1970: zero, not a wrapped value")
}
