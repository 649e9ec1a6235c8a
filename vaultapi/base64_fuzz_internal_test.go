package vaultapi

import (
	"encoding/base64"
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// FuzzDecodeBase64Field checks the base64 and length validation of every
// key-carrying field (recoveryWrappedMk, recoveryIv, masterKey) against a
// reference: a value is accepted exactly when standard base64, padded or
// not, decodes it to the field's size, and a refusal is always a 400
// BAD_REQUEST whose message never repeats the value (it may be key
// material).
func FuzzDecodeBase64Field(f *testing.F) {
	std := base64.StdEncoding
	for _, s := range []struct {
		value string
		size  int
	}{
		{std.EncodeToString(make([]byte, 32)), 32},
		{strings.TrimRight(std.EncodeToString(make([]byte, 32)), "="), 32},
		{std.EncodeToString(make([]byte, 48)), 48},
		{std.EncodeToString(make([]byte, 12)), 12},
		{std.EncodeToString(make([]byte, 31)), 32},
		{std.EncodeToString(make([]byte, 33)), 32},
		{strings.Repeat("_-", 32), 48},
		{"AAAA\nAAAA", 6},
		{"AA==AA==", 2},
		{"A", 0},
		{"", 0},
		{"====", 0},
		{"\xff\xfe", 1},
	} {
		f.Add(s.value, s.size)
	}
	f.Fuzz(func(t *testing.T, value string, size int) {
		size = ((size % 64) + 64) % 64
		got, err := decodeBase64Field("field", value, size)
		want, ok := referenceDecode(value, size)
		if !ok {
			require.Error(t, err, "accepted %q for %d bytes", value, size)
			var ae *apiError
			require.True(t, errors.As(err, &ae))
			require.Equal(t, http.StatusBadRequest, ae.status)
			require.Equal(t, CodeBadRequest, ae.code)
			if len(value) >= 4 {
				require.NotContains(t, ae.message, value, "a refusal never echoes the value")
			}
			return
		}
		require.NoError(t, err, "refused %q for %d bytes", value, size)
		require.Equal(t, want, got)
	})
}

// referenceDecode is what the field validation must accept: standard
// alphabet (the browser's btoa), with or without padding, exactly size
// bytes.
func referenceDecode(value string, size int) ([]byte, bool) {
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding} {
		if b, err := enc.DecodeString(value); err == nil {
			return b, len(b) == size
		}
	}
	return nil, false
}
