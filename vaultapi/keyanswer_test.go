package vaultapi

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestKeyAnswerIsWhatEncodingJSONWrites: the hand-written key answer is
// byte for byte what encoding/json's Encoder wrote for keyResponse, for
// KEK ids that need escaping too (quotes, backslashes, HTML characters,
// control and non-ASCII characters, invalid UTF-8), and the raw key is
// wiped once it is written.
func TestKeyAnswerIsWhatEncodingJSONWrites(t *testing.T) {
	for _, kekID := range []string{"env-v1", "", `a"b\c`, "<&>", "tab\there", "é\u2028", "bad\xffutf8", "awskms:///alias/x?id=aws"} {
		key := bytes.Repeat([]byte{0xfb, 0xff, 0x01}, 11)[:32]
		var want bytes.Buffer
		require.NoError(t, json.NewEncoder(&want).Encode(keyResponse{MasterKey: base64.StdEncoding.EncodeToString(key), FormatVersion: 2, KEKID: kekID}))
		rec := httptest.NewRecorder()
		writeJSON(rec, http.StatusOK, &keyAnswer{key: key, formatVersion: 2, kekID: kekID})
		require.Equal(t, want.String(), rec.Body.String(), "kekId %q", kekID)
		require.Equal(t, "application/json; charset=utf-8", rec.Header().Get("Content-Type"))
		require.Equal(t, make([]byte, 32), key, "the raw key is wiped once written")
	}
	marshalled, err := json.Marshal(&keyAnswer{key: []byte{1, 2, 3}, formatVersion: 1, kekID: "k"})
	require.NoError(t, err)
	require.JSONEq(t, `{"masterKey":"AQID","formatVersion":1,"kekId":"k"}`, string(marshalled))
}
