package vaultapi

import (
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strconv"
	"sync"
)

// keyAnswer is the body of a key answer in standard mode:
// {"masterKey","formatVersion","kekId"}. It holds the raw key until the
// answer is written, then wipes it and the bytes it was encoded into: no
// base64 copy of the key is left on the heap for the GC to free some day.
// writeKeyAnswer writes the same bytes encoding/json would write for
// keyResponse, without reflection.
type keyAnswer struct {
	key           []byte // wiped once written
	formatVersion int
	kekID         string
}

// MarshalJSON is for any encoder other than writeJSON's fast path; it
// leaves the key in place.
func (k *keyAnswer) MarshalJSON() ([]byte, error) {
	return json.Marshal(keyResponse{MasterKey: base64.StdEncoding.EncodeToString(k.key), FormatVersion: k.formatVersion, KEKID: k.kekID})
}

var answerBuffers = sync.Pool{New: func() any { b := make([]byte, 0, 256); return &b }}

// plainJSON reports whether encoding/json writes s as is between quotes:
// printable ASCII other than '"', '\' and the HTML characters it escapes.
func plainJSON(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c > 0x7e || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			return false
		}
	}
	return true
}

// writeKeyAnswer writes k as writeJSON would, then wipes the key and the
// buffer.
func writeKeyAnswer(w http.ResponseWriter, status int, k *keyAnswer) {
	defer clear(k.key)
	bp := answerBuffers.Get().(*[]byte)
	b := append((*bp)[:0], `{"masterKey":"`...)
	b = base64.StdEncoding.AppendEncode(b, k.key)
	b = append(b, `","formatVersion":`...)
	b = strconv.AppendInt(b, int64(k.formatVersion), 10)
	b = append(b, `,"kekId":`...)
	if plainJSON(k.kekID) {
		b = append(b, '"')
		b = append(b, k.kekID...)
		b = append(b, '"')
	} else {
		quoted, _ := json.Marshal(k.kekID) // a string always encodes
		b = append(b, quoted...)
	}
	b = append(b, "}\n"...)
	w.Header()["Content-Type"] = jsonTypeValue
	w.WriteHeader(status)
	_, _ = w.Write(b)
	clear(b)
	*bp = b[:0]
	answerBuffers.Put(bp)
}
