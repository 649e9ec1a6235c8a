package client

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/keybroker/keybroker/grant"
)

// MissionGrantPath is where keybroker serves the mission grant route,
// below Config.BaseURL.
const MissionGrantPath = "/api/v1/me/ai-mission-grant"

// MissionGrantRequest asks for a mission grant: a background worker may
// decrypt the listed records of the listed tables (record ids are
// "<table>:<id>").
type MissionGrantRequest struct {
	MissionID string
	Tables    []string
	RecordIDs []string
	// TTL is the grant's lifetime; 0 for the server's default (7 days).
	// The server clamps it to 1 hour–30 days.
	TTL time.Duration
	// Recipient names the worker, as the server's
	// KEYBROKER_GRANT_RECIPIENTS does; "" for the default recipient (the
	// upstream's grant, RSA-OAEP and bound to nothing).
	Recipient string
}

// MissionGrant is a grant the server issued.
type MissionGrant struct {
	// JSON is the server's answer as it was sent: hand it to the worker,
	// whose grant/worker.ParseGrant reads it.
	JSON       []byte
	WrappedKey []byte
	// Derivation is the scope the key was derived for, its lists sorted
	// as the browser sorts them.
	Derivation grant.Derivation
	IssuedAt   time.Time
	ExpiresAt  time.Time
	// Recipient and Algorithm are set when the request named its
	// recipient.
	Recipient string
	Algorithm string
}

// MissionGrant asks the server to wrap a mission data key for req's scope
// to a worker. It returns ErrBadRequest for a scope the server refuses
// (the APIError's message names the field), ErrGrantRecipientUnknown for
// a recipient it does not have, ErrGrantNotConfigured when it has no
// default recipient, ErrVaultNotInitialised before Init and ErrZKActive
// in zero-knowledge mode.
func (c *Client) MissionGrant(ctx context.Context, req MissionGrantRequest) (*MissionGrant, error) {
	body := map[string]any{"missionId": req.MissionID, "tables": req.Tables, "recordIds": req.RecordIDs}
	if req.TTL != 0 {
		body["ttlMs"] = req.TTL.Milliseconds()
	}
	if req.Recipient != "" {
		body["recipient"] = req.Recipient
	}
	var raw json.RawMessage
	if err := c.send(ctx, http.MethodPost, c.root+MissionGrantPath, MissionGrantPath, body, &raw); err != nil {
		return nil, err
	}
	var answer struct {
		WrappedKey string `json:"wrappedKey"`
		Derivation struct {
			Version   string   `json:"version"`
			MissionID string   `json:"missionId"`
			Tables    []string `json:"tables"`
			RecordIDs []string `json:"recordIds"`
		} `json:"derivation"`
		IssuedAt  time.Time `json:"issuedAt"`
		ExpiresAt time.Time `json:"expiresAt"`
		Recipient string    `json:"recipient"`
		Algorithm string    `json:"algorithm"`
	}
	if err := json.Unmarshal(raw, &answer); err != nil {
		return nil, errors.New("client: mission grant: the answer is not a grant")
	}
	wrapped, err := base64.StdEncoding.DecodeString(answer.WrappedKey)
	if err != nil || len(wrapped) == 0 {
		return nil, errors.New("client: mission grant: wrappedKey is not base64")
	}
	d := answer.Derivation
	return &MissionGrant{
		JSON: bytes.Clone(raw), WrappedKey: wrapped,
		Derivation: grant.Derivation{Version: d.Version, MissionID: d.MissionID, Tables: d.Tables, RecordIDs: d.RecordIDs},
		IssuedAt:   answer.IssuedAt, ExpiresAt: answer.ExpiresAt, Recipient: answer.Recipient, Algorithm: answer.Algorithm,
	}, nil
}

// MissionKey is the mission data key of g under the master key mk, as
// the browser derives it to encrypt the mission's records (HKDF-SHA256,
// docs/grants.md): the key the worker unwraps from g. The caller wipes
// it when done.
func MissionKey(mk []byte, g *MissionGrant) ([]byte, error) {
	if err := g.Derivation.Canonical(); err != nil {
		return nil, fmt.Errorf("client: mission key: %w", err)
	}
	return grant.DeriveKey(mk, g.Derivation)
}
