package vaultapi

import (
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/keybroker/keybroker/broker"
)

// discardWriter is a ResponseWriter that keeps headers and drops the
// body, so a benchmark counts the encoder's allocations, not a recorder's.
type discardWriter struct{ h http.Header }

func (d *discardWriter) Header() http.Header         { return d.h }
func (d *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (d *discardWriter) WriteHeader(int)             {}

// BenchmarkKeyResponse encodes the body of GET /key: base64 of the master
// key and the JSON object.
func BenchmarkKeyResponse(b *testing.B) {
	w := &discardWriter{h: http.Header{}}
	mk := make([]byte, broker.MasterKeySize)
	b.ReportAllocs()
	for b.Loop() {
		res := &broker.KeyResult{MasterKey: mk, FormatVersion: broker.FormatBound, KEKID: "env-v1"}
		writeJSON(w, http.StatusOK, keyBody(res))
	}
}

// BenchmarkDecodeZeroKnowledgeRequest decodes the largest request body of
// the API: {enable:false, masterKey} with the key's base64 checked.
func BenchmarkDecodeZeroKnowledgeRequest(b *testing.B) {
	const body = `{"enable":false,"masterKey":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}`
	r, err := http.NewRequest(http.MethodPost, BasePath+"/zero-knowledge", nil)
	if err != nil {
		b.Fatal(err)
	}
	reader := strings.NewReader(body)
	b.ReportAllocs()
	for b.Loop() {
		reader.Reset(body)
		r.Body = io.NopCloser(reader)
		var req zeroKnowledgeRequest
		if err := decodeJSON(r, &req, enableRequired); err != nil {
			b.Fatal(err)
		}
		mk, err := decodeBase64Field("masterKey", *req.MasterKey, broker.MasterKeySize)
		if err != nil {
			b.Fatal(err)
		}
		clear(mk)
	}
}

// BenchmarkBearerToken extracts the token from the Authorization header.
func BenchmarkBearerToken(b *testing.B) {
	header := "Bearer " + strings.Repeat("x", 300)
	b.ReportAllocs()
	for b.Loop() {
		if _, ok := bearerToken(header); !ok {
			b.Fatal("no token")
		}
	}
}
