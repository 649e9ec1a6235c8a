package vaultapi

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"

	"github.com/keybroker/keybroker/broker"
)

// Reading request bodies: JSON that says where it breaks, base64 fields of a fixed size.

// decodeJSON reads one JSON object from the (size-limited) body. A body
// over the limit is 413; a body that is not one JSON object is 400 with
// what is wrong with it ("request body is not valid JSON: …"), and a
// field of the wrong type 400 with the route's own message (the fields it
// needs). No message quotes the body: it may hold key material.
func decodeJSON(r *http.Request, dst any, message string) error {
	dec := json.NewDecoder(r.Body)
	err := dec.Decode(dst)
	if err == nil {
		// One object and nothing after it but white space.
		if _, err2 := dec.Token(); err2 != io.EOF {
			var tooLarge *http.MaxBytesError
			if errors.As(err2, &tooLarge) {
				err = err2
			} else {
				return badRequest("request body is not valid JSON: more data after the JSON object")
			}
		}
	}
	if err == nil {
		return nil
	}
	var tooLarge *http.MaxBytesError
	var syntaxErr *json.SyntaxError
	var typeErr *json.UnmarshalTypeError
	switch {
	case errors.As(err, &tooLarge):
		return newAPIError(CodePayloadTooLarge, fmt.Sprintf("request body is larger than %d bytes", tooLarge.Limit))
	case errors.Is(err, io.EOF):
		return badRequest("request body is empty: send a JSON object")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return badRequest("request body is not valid JSON: it ends before the JSON object does")
	case errors.As(err, &syntaxErr):
		// The offset, never the offending character: the body may be a
		// key.
		return badRequest(fmt.Sprintf("request body is not valid JSON: syntax error at byte %d", syntaxErr.Offset))
	case errors.As(err, &typeErr) && typeErr.Field == "":
		return badRequest("request body is not a JSON object")
	}
	return badRequest(message)
}

// decodeBase64Field decodes standard base64 (what the browser's btoa
// makes; padding optional) and checks the decoded length. The value is
// never echoed back: it may be key material.
func decodeBase64Field(name, value string, size int) ([]byte, error) {
	// Padded first, then unpadded; the decoder, not the raw length, says
	// which applies: it skips line breaks, which a length test counts.
	b, err := base64.StdEncoding.DecodeString(value)
	if err != nil {
		if b, err = base64.RawStdEncoding.DecodeString(value); err != nil {
			return nil, badRequest(name + " is not valid base64")
		}
	}
	if len(b) != size {
		clear(b)
		return nil, badRequest(fmt.Sprintf("%s must decode to %d bytes", name, size))
	}
	return b, nil
}

// decodeKeyProof decodes the optional keyProof field: absent or null is
// nil, anything else must be base64 of broker.KeyProofSize bytes.
func decodeKeyProof(value *string) ([]byte, error) {
	if value == nil {
		return nil, nil
	}
	return decodeBase64Field("keyProof", *value, broker.KeyProofSize)
}
