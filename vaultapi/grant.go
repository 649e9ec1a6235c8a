package vaultapi

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/grant"
)

// MissionGrantPath is the upstream's mission grant route: a signed-in
// user grants a background worker a mission data key for a chosen set of
// records (broker.Service.Grant).
const MissionGrantPath = "/api/v1/me/ai-mission-grant"

// DefaultGrantMaxBodyBytes is the body limit of the grant route: 1 000
// record ids of up to 256 bytes each, with room for JSON's quoting.
const DefaultGrantMaxBodyBytes = 512 << 10

// missionGrantRequest is the upstream's request, plus keybroker's
// recipient. Pointers tell an absent field (or null) from a given one.
type missionGrantRequest struct {
	MissionID *string
	Tables    *[]string
	RecordIDs *[]string
	TTLMillis *float64
	Recipient *string
}

// missionGrantDerivation is the derivation as the upstream sent it.
type missionGrantDerivation struct {
	Version   string   `json:"version"`
	MissionID string   `json:"missionId"`
	Tables    []string `json:"tables"`
	RecordIDs []string `json:"recordIds"`
}

// missionGrantResponse is the upstream's response. Recipient and
// Algorithm are keybroker's, sent only to a request that named its
// recipient: an upstream request gets the upstream's shape exactly.
type missionGrantResponse struct {
	WrappedKey string                 `json:"wrappedKey"`
	Derivation missionGrantDerivation `json:"derivation"`
	IssuedAt   string                 `json:"issuedAt"`
	ExpiresAt  string                 `json:"expiresAt"`
	Recipient  string                 `json:"recipient,omitempty"`
	Algorithm  string                 `json:"algorithm,omitempty"`
}

const missionGrantFields = "missionId (string), tables (array of strings), recordIds (array of strings), ttlMs (number, optional), recipient (string, optional)"

func (a *API) missionGrant(r *http.Request, userID string, meta broker.RequestMeta) (any, error) {
	var req missionGrantRequest
	err := decodeStrictObject(r, []strictField{
		{"missionId", &req.MissionID, "missionId must be a non-empty string"},
		{"tables", &req.Tables, "tables must be a non-empty array of strings"},
		{"recordIds", &req.RecordIDs, "recordIds must be a non-empty array of strings"},
		{"ttlMs", &req.TTLMillis, "ttlMs must be a number of milliseconds"},
		{"recipient", &req.Recipient, "recipient must be a string naming a configured recipient"},
	}, "the body must be one JSON object with "+missionGrantFields)
	if err != nil {
		return nil, err
	}
	if req.Recipient != nil && *req.Recipient == "" {
		return nil, badRequest("recipient must be a string naming a configured recipient")
	}
	breq := broker.GrantRequest{TTLMillis: req.TTLMillis}
	if req.MissionID != nil {
		breq.MissionID = *req.MissionID
	}
	if req.Tables != nil {
		breq.Tables = *req.Tables
	}
	if req.RecordIDs != nil {
		breq.RecordIDs = *req.RecordIDs
	}
	if req.Recipient != nil {
		breq.Recipient = *req.Recipient
	}
	res, err := a.svc.Grant(r.Context(), userID, breq, meta)
	var input *grant.InputError
	if errors.As(err, &input) {
		return nil, badRequest(input.Error())
	}
	if err != nil {
		return nil, err
	}
	d := res.Terms.Derivation
	body := missionGrantResponse{
		WrappedKey: base64.StdEncoding.EncodeToString(res.WrappedKey),
		Derivation: missionGrantDerivation{Version: d.Version, MissionID: d.MissionID, Tables: d.Tables, RecordIDs: d.RecordIDs},
		IssuedAt:   isoTime(res.Terms.IssuedAt),
		ExpiresAt:  isoTime(res.Terms.ExpiresAt),
	}
	if req.Recipient != nil {
		body.Recipient, body.Algorithm = res.Recipient, string(res.Algorithm)
	}
	return body, nil
}

// strictField is one field decodeStrictObject accepts: its exact name,
// where its value goes (a pointer for json.Decoder.Decode) and the
// message of a value of the wrong type.
type strictField struct {
	name    string
	dst     any
	message string
}

// decodeStrictObject reads one JSON object from the (size-limited) body
// and nothing after it. Unlike decodeJSON it refuses what
// encoding/json lets through: a field it does not know, a field named in
// another case ("MissionId"), and a field given twice (of which
// encoding/json keeps the last silently). A body over the limit is 413;
// every other refusal is 400 with a message that names the field, never
// its value nor an unknown field's name.
func decodeStrictObject(r *http.Request, fields []strictField, message string) error {
	dec := json.NewDecoder(r.Body)
	fail := func(err error, text string) error {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			return newAPIError(CodePayloadTooLarge, fmt.Sprintf("request body is larger than %d bytes", tooLarge.Limit))
		}
		return badRequest(text)
	}
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return fail(err, message)
	}
	seen := make([]bool, len(fields))
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return fail(err, message)
		}
		key, _ := tok.(string)
		i := slices.IndexFunc(fields, func(f strictField) bool { return f.name == key })
		if i < 0 {
			return badRequest("unknown field in the request body; the fields are " + missionFieldNames(fields))
		}
		if seen[i] {
			return badRequest(fields[i].name + " is given twice")
		}
		seen[i] = true
		if err := dec.Decode(fields[i].dst); err != nil {
			return fail(err, fields[i].message)
		}
	}
	if tok, err := dec.Token(); err != nil || tok != json.Delim('}') {
		return fail(err, message)
	}
	if _, err := dec.Token(); err != io.EOF {
		return fail(err, message)
	}
	return nil
}

func missionFieldNames(fields []strictField) string {
	names := make([]string, len(fields))
	for i, f := range fields {
		names[i] = f.name
	}
	return strings.Join(names, ", ")
}
