package grant_test

import (
	"slices"
	"testing"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/grant"
)

// FuzzCompareUTF16 holds the package's order to its definition — the
// order of the strings' UTF-16 code units, as JavaScript compares — for
// any two valid strings.
func FuzzCompareUTF16(f *testing.F) {
	for _, s := range [][2]string{{"notes:a", "notes:\U0001F600"}, {"\uffff", "\U00010000"}, {"", "a"}, {"ab", "a"}, {"é", "e\u0301"}} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, a, b string) {
		if !utf8.ValidString(a) || !utf8.ValidString(b) {
			return // JSON hands the derivation valid UTF-8 only
		}
		want := slices.Compare(utf16.Encode([]rune(a)), utf16.Encode([]rune(b)))
		require.Equal(t, want, grant.CompareUTF16(a, b), "%q vs %q", a, b)
		require.Equal(t, -want, grant.CompareUTF16(b, a))
	})
}
