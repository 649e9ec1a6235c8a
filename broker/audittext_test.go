package broker

import (
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
