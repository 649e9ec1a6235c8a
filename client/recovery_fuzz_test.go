package client

import (
	"bytes"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// FuzzParseRecoveryCode: the recovery-code parser never panics; what it
// accepts is exactly 64 hex digits once dashes and white space are
// dropped, the secret it returns formats back to the same digits, and an
// error never repeats the code (a wrong code is still close to the
// secret).
func FuzzParseRecoveryCode(f *testing.F) {
	secret := bytes.Repeat([]byte{0xA5}, RecoverySecretSize)
	code := formatRecoveryCode(secret)
	for _, s := range []string{
		code,
		strings.ToLower(code),
		strings.ReplaceAll(code, "-", ""),
		strings.ReplaceAll(code, "-", " "),
		strings.ReplaceAll(code, "-", "\r\n"),
		" \t" + code + "\n",
		code[:len(code)-1],
		code + "0",
		code[:len(code)-1] + "G",
		strings.Replace(code, "A", "Ａ", 1), // full-width A is not hex
		"",
		"----",
		"0x" + code,
		strings.Repeat("0", 64),
		strings.Repeat("0", 63) + "\x00",
		"\xff\xfe",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, code string) {
		got, err := ParseRecoveryCode(code)
		digits := strings.Map(func(r rune) rune {
			if r == '-' || r == ' ' || r == '\t' || r == '\n' || r == '\r' {
				return -1
			}
			return r
		}, code)
		if err != nil {
			require.Nil(t, got)
			if len(digits) >= 8 {
				require.NotContains(t, err.Error(), digits, "an error repeats the code")
			}
			return
		}
		require.Len(t, got, RecoverySecretSize)
		require.Regexp(t, `^[0-9a-fA-F]{64}$`, digits)
		require.Equal(t, strings.ToUpper(digits), strings.ReplaceAll(formatRecoveryCode(got), "-", ""))
		again, err := ParseRecoveryCode(formatRecoveryCode(got))
		require.NoError(t, err)
		require.Equal(t, got, again)
	})
}
