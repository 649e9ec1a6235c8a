package faketransit

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net/http"
	"time"
)

func (s *Server) issue(ttl, maxTTL time.Duration, renewable bool) string {
	raw := make([]byte, 18)
	rand.Read(raw)
	tok := "hvs." + base64.RawURLEncoding.EncodeToString(raw)
	now := time.Now()
	s.tokens[tok] = &token{policies: []string{"default", "keybroker"}, ttl: ttl, maxTTL: maxTTL, renewable: renewable, issued: now, expires: now.Add(ttl)}
	return tok
}

// --- HTTP ---

func (s *Server) authenticate(r *http.Request) (*token, *apiError) {
	tok := s.tokens[r.Header.Get("X-Vault-Token")]
	if tok == nil || (tok.ttl > 0 && time.Now().After(tok.expires)) {
		return nil, fail(http.StatusForbidden, "permission denied")
	}
	return tok, nil
}

func authResponse(tok string, t *token) map[string]any {
	return map[string]any{"auth": map[string]any{
		"client_token":   tok,
		"accessor":       "acc-" + tok[len(tok)-6:],
		"policies":       t.policies,
		"token_policies": t.policies,
		"metadata":       map[string]string{},
		"lease_duration": int(time.Until(t.expires).Round(time.Second) / time.Second),
		"renewable":      t.renewable,
		"entity_id":      "",
		"token_type":     "service",
		"orphan":         true,
	}}
}

func (s *Server) loginAppRole(body map[string]any) (map[string]any, *apiError) {
	roleID, _ := body["role_id"].(string)
	secretID, _ := body["secret_id"].(string)
	role, ok := s.approles[roleID]
	if !ok {
		return nil, fail(http.StatusBadRequest, "invalid role ID")
	}
	if secretID != role.secret {
		return nil, fail(http.StatusBadRequest, "invalid secret id")
	}
	s.event("login approle")
	tok := s.issue(role.ttl, 0, role.renewable)
	return authResponse(tok, s.tokens[tok]), nil
}

func (s *Server) loginKubernetes(body map[string]any) (map[string]any, *apiError) {
	roleName, _ := body["role"].(string)
	jwt, _ := body["jwt"].(string)
	role, ok := s.k8sRoles[roleName]
	if !ok {
		return nil, fail(http.StatusBadRequest, fmt.Sprintf("invalid role name %q", roleName))
	}
	if jwt != role.secret {
		return nil, fail(http.StatusForbidden, "permission denied")
	}
	s.event("login kubernetes")
	tok := s.issue(role.ttl, 0, role.renewable)
	return authResponse(tok, s.tokens[tok]), nil
}

func (s *Server) lookupSelf(id string, t *token) map[string]any {
	ttl := 0
	var expire any
	if t.ttl > 0 {
		ttl = int(time.Until(t.expires).Round(time.Second) / time.Second)
		expire = t.expires.UTC().Format(time.RFC3339Nano)
	}
	return map[string]any{"data": map[string]any{
		"accessor":         "acc-" + id[len(id)-6:],
		"creation_time":    t.issued.Unix(),
		"creation_ttl":     int(t.ttl / time.Second),
		"display_name":     "token",
		"expire_time":      expire,
		"explicit_max_ttl": int(t.maxTTL / time.Second),
		"id":               id,
		"policies":         t.policies,
		"renewable":        t.renewable,
		"ttl":              ttl,
		"type":             "service",
	}}
}

func (s *Server) renewSelf(id string, t *token, body map[string]any) (map[string]any, *apiError) {
	if !t.renewable || t.ttl == 0 {
		return nil, fail(http.StatusBadRequest, "lease is not renewable")
	}
	s.event("renew-self")
	expires := time.Now().Add(t.ttl)
	if t.maxTTL > 0 && expires.After(t.issued.Add(t.maxTTL)) {
		expires = t.issued.Add(t.maxTTL)
	}
	t.expires = expires
	return authResponse(id, t), nil
}

// --- Transit ---
