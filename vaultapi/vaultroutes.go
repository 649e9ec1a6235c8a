package vaultapi

import (
	"crypto/subtle"
	"net/http"
	"time"

	"github.com/keybroker/keybroker/broker"
)

// The vault routes' handlers and the JSON they answer, as the original service wrote it.

type statusResponse struct {
	VaultExists     bool    `json:"vaultExists"`
	HasRecoveryWrap bool    `json:"hasRecoveryWrap"`
	ZeroKnowledge   bool    `json:"zeroKnowledge"`
	RecoverySetAt   *string `json:"recoverySetAt"`
}

type keyResponse struct {
	MasterKey     string `json:"masterKey"`
	FormatVersion int    `json:"formatVersion"`
	KEKID         string `json:"kekId"`
}

type zkKeyResponse struct {
	RequiresRecoveryCode bool   `json:"requiresRecoveryCode"`
	RecoveryWrappedMK    string `json:"recoveryWrappedMk"`
	RecoveryIV           string `json:"recoveryIv"`
	FormatVersion        int    `json:"formatVersion"`
}

type okResponse struct {
	OK bool `json:"ok"`
}

type zkToggleResponse struct {
	OK            bool `json:"ok"`
	ZeroKnowledge bool `json:"zeroKnowledge"`
}

// isoTime formats t as JavaScript's Date.prototype.toJSON does, which is
// what the original service sent.
func isoTime(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.000Z") }

// keyBody turns a domain result into the original's JSON shape; the raw
// key is wiped once writeJSON has written it.
func keyBody(res *broker.KeyResult) any {
	if res.RequiresRecoveryCode {
		return zkKeyResponse{
			RequiresRecoveryCode: true,
			RecoveryWrappedMK:    res.RecoveryWrappedMK,
			RecoveryIV:           res.RecoveryIV,
			FormatVersion:        res.FormatVersion,
		}
	}
	// writeJSON encodes it and wipes the key.
	return &keyAnswer{key: res.MasterKey, formatVersion: res.FormatVersion, kekID: res.KEKID}
}

func (a *API) status(r *http.Request, userID string, _ broker.RequestMeta) (any, error) {
	st, err := a.svc.Status(r.Context(), userID)
	if err != nil {
		return nil, err
	}
	resp := statusResponse{VaultExists: st.VaultExists, HasRecoveryWrap: st.HasRecoveryWrap, ZeroKnowledge: st.ZeroKnowledge}
	if st.RecoverySetAt != nil {
		s := isoTime(*st.RecoverySetAt)
		resp.RecoverySetAt = &s
	}
	return resp, nil
}

func (a *API) init(r *http.Request, userID string, meta broker.RequestMeta) (any, error) {
	res, err := a.svc.Init(r.Context(), userID, meta)
	if err != nil {
		return nil, err
	}
	return keyBody(res), nil
}

func (a *API) key(r *http.Request, userID string, meta broker.RequestMeta) (any, error) {
	res, err := a.svc.Key(r.Context(), userID, meta)
	if err != nil {
		return nil, err
	}
	return keyBody(res), nil
}

func (a *API) rotate(r *http.Request, userID string, meta broker.RequestMeta) (any, error) {
	res, err := a.svc.Rotate(r.Context(), userID, meta)
	if err != nil {
		return nil, err
	}
	return keyBody(res), nil
}

type recoveryWrapRequest struct {
	RecoveryWrappedMK *string `json:"recoveryWrappedMk"`
	RecoveryIV        *string `json:"recoveryIv"`
	// KeyProof is keybroker's addition: base64 of the 32-byte key
	// possession proof (broker.KeyProof). Optional; required to replace
	// a zero-knowledge recovery wrap.
	KeyProof *string `json:"keyProof"`
}

const recoveryWrapRequired = "recoveryWrappedMk and recoveryIv are required (base64 strings)"

func (a *API) setRecoveryWrap(r *http.Request, userID string, meta broker.RequestMeta) (any, error) {
	var req recoveryWrapRequest
	if err := decodeJSON(r, &req, recoveryWrapRequired); err != nil {
		return nil, err
	}
	if req.RecoveryWrappedMK == nil || req.RecoveryIV == nil || *req.RecoveryWrappedMK == "" || *req.RecoveryIV == "" {
		return nil, badRequest(recoveryWrapRequired)
	}
	wrapped, err := decodeBase64Field("recoveryWrappedMk", *req.RecoveryWrappedMK, broker.RecoveryWrapSize)
	if err != nil {
		return nil, err
	}
	iv, err := decodeBase64Field("recoveryIv", *req.RecoveryIV, broker.RecoveryIVSize)
	if err != nil {
		return nil, err
	}
	proof, err := decodeKeyProof(req.KeyProof)
	if err != nil {
		return nil, err
	}
	defer clear(proof)
	if err := a.svc.SetRecoveryWrap(r.Context(), userID, wrapped, iv, proof, meta); err != nil {
		return nil, err
	}
	return okResponse{OK: true}, nil
}

func (a *API) clearRecoveryWrap(r *http.Request, userID string, meta broker.RequestMeta) (any, error) {
	if err := a.svc.ClearRecoveryWrap(r.Context(), userID, meta); err != nil {
		return nil, err
	}
	return okResponse{OK: true}, nil
}

type zeroKnowledgeRequest struct {
	Enable    *bool   `json:"enable"`
	MasterKey *string `json:"masterKey"`
	// KeyProof is optional; with enable true it is checked against the
	// vault, with enable false it must be masterKey's proof.
	KeyProof *string `json:"keyProof"`
}

const enableRequired = "`enable: boolean` is required"

func (a *API) zeroKnowledge(r *http.Request, userID string, meta broker.RequestMeta) (any, error) {
	var req zeroKnowledgeRequest
	if err := decodeJSON(r, &req, enableRequired); err != nil {
		return nil, err
	}
	if req.Enable == nil {
		return nil, badRequest(enableRequired)
	}
	proof, err := decodeKeyProof(req.KeyProof)
	if err != nil {
		return nil, err
	}
	defer clear(proof)
	if *req.Enable {
		if err := a.svc.EnableZeroKnowledge(r.Context(), userID, proof, meta); err != nil {
			return nil, err
		}
		return zkToggleResponse{OK: true, ZeroKnowledge: true}, nil
	}
	if req.MasterKey == nil || *req.MasterKey == "" {
		return nil, badRequest("`masterKey: base64` is required when disabling zero-knowledge")
	}
	mk, err := decodeBase64Field("masterKey", *req.MasterKey, broker.MasterKeySize)
	if err != nil {
		return nil, err
	}
	defer clear(mk)
	if proof != nil {
		// masterKey is the proof itself; a keyProof beside it that is not
		// its proof makes the request contradict itself.
		own := broker.KeyProof(mk)
		same := subtle.ConstantTimeCompare(own, proof) == 1
		clear(own)
		if !same {
			return nil, badRequest("keyProof is not the proof of masterKey")
		}
	}
	if err := a.svc.DisableZeroKnowledge(r.Context(), userID, mk, meta); err != nil {
		return nil, err
	}
	return zkToggleResponse{OK: true, ZeroKnowledge: false}, nil
}
