package faketransit

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
)

func newKey(derived bool) *transitKey {
	k := &transitKey{derived: derived, minDecryption: 1}
	k.rotate()
	return k
}

func (k *transitKey) rotate() {
	material := make([]byte, 32)
	rand.Read(material)
	k.versions = append(k.versions, material)
	k.created = append(k.created, time.Now().UTC())
}

func (s *Server) transitKey(name string) (*transitKey, *apiError) {
	k := s.keys[name]
	if k == nil {
		return nil, fail(http.StatusBadRequest, "encryption key not found")
	}
	return k, nil
}

func decodeField(body map[string]any, field string) ([]byte, *apiError) {
	v, _ := body[field].(string)
	if v == "" {
		return nil, nil
	}
	b, err := base64.StdEncoding.DecodeString(v)
	if err != nil {
		return nil, fail(http.StatusBadRequest, fmt.Sprintf("failed to base64-decode %s", field))
	}
	return b, nil
}

// aead returns the cipher of version v under context (derived keys).
func (k *transitKey) aead(v int, context []byte) (cipher.AEAD, *apiError) {
	material := k.versions[v-1]
	if k.derived {
		if len(context) == 0 {
			return nil, fail(http.StatusBadRequest, "missing 'context' for key derivation; the key was created using a derived key, which means additional, per-request information must be included in order to perform operations with the key")
		}
		derived, err := hkdf.Key(sha256.New, material, nil, string(context), 32)
		if err != nil {
			return nil, fail(http.StatusInternalServerError, err.Error())
		}
		material = derived
	}
	block, err := aes.NewCipher(material)
	if err != nil {
		return nil, fail(http.StatusInternalServerError, err.Error())
	}
	gcm, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fail(http.StatusInternalServerError, err.Error())
	}
	return gcm, nil
}

func (k *transitKey) seal(plaintext, context, aad []byte) (string, int, *apiError) {
	v := len(k.versions)
	gcm, apiErr := k.aead(v, context)
	if apiErr != nil {
		return "", 0, apiErr
	}
	nonce := make([]byte, gcm.NonceSize())
	rand.Read(nonce)
	ct := gcm.Seal(nonce, nonce, plaintext, aad)
	return "vault:v" + strconv.Itoa(v) + ":" + base64.StdEncoding.EncodeToString(ct), v, nil
}

func (k *transitKey) open(ciphertext string, context, aad []byte) ([]byte, *apiError) {
	rest, ok := strings.CutPrefix(ciphertext, "vault:v")
	if !ok {
		return nil, fail(http.StatusBadRequest, "invalid ciphertext: no prefix")
	}
	vText, encoded, ok := strings.Cut(rest, ":")
	if !ok {
		return nil, fail(http.StatusBadRequest, "invalid ciphertext: wrong number of fields")
	}
	v, err := strconv.Atoi(vText)
	if err != nil {
		return nil, fail(http.StatusBadRequest, "invalid ciphertext: version number could not be decoded")
	}
	if v < 1 || v > len(k.versions) {
		return nil, fail(http.StatusBadRequest, "invalid ciphertext: version is too new")
	}
	if v < k.minDecryption {
		return nil, fail(http.StatusBadRequest, "ciphertext or signature version is disallowed by policy (too old)")
	}
	raw, err := base64.StdEncoding.DecodeString(encoded)
	if err != nil {
		return nil, fail(http.StatusBadRequest, "invalid ciphertext: could not decode base64")
	}
	gcm, apiErr := k.aead(v, context)
	if apiErr != nil {
		return nil, apiErr
	}
	if len(raw) < gcm.NonceSize()+gcm.Overhead() {
		return nil, fail(http.StatusBadRequest, "invalid ciphertext: size is too small")
	}
	plaintext, err := gcm.Open(nil, raw[:gcm.NonceSize()], raw[gcm.NonceSize():], aad)
	if err != nil {
		return nil, fail(http.StatusBadRequest, "cipher: message authentication failed")
	}
	return plaintext, nil
}

func (s *Server) encrypt(name string, body map[string]any) (map[string]any, *apiError) {
	k, apiErr := s.transitKey(name)
	if apiErr != nil {
		return nil, apiErr
	}
	plaintext, apiErr := decodeField(body, "plaintext")
	if apiErr != nil {
		return nil, apiErr
	}
	context, apiErr := decodeField(body, "context")
	if apiErr != nil {
		return nil, apiErr
	}
	aad, apiErr := decodeField(body, "associated_data")
	if apiErr != nil {
		return nil, apiErr
	}
	ct, v, apiErr := k.seal(plaintext, context, aad)
	if apiErr != nil {
		return nil, apiErr
	}
	return map[string]any{"data": map[string]any{"ciphertext": ct, "key_version": v}}, nil
}

func (s *Server) decrypt(name string, body map[string]any) (map[string]any, *apiError) {
	k, apiErr := s.transitKey(name)
	if apiErr != nil {
		return nil, apiErr
	}
	ciphertext, _ := body["ciphertext"].(string)
	if ciphertext == "" {
		return nil, fail(http.StatusBadRequest, "missing ciphertext to decrypt")
	}
	context, apiErr := decodeField(body, "context")
	if apiErr != nil {
		return nil, apiErr
	}
	aad, apiErr := decodeField(body, "associated_data")
	if apiErr != nil {
		return nil, apiErr
	}
	plaintext, apiErr := k.open(ciphertext, context, aad)
	if apiErr != nil {
		return nil, apiErr
	}
	return map[string]any{"data": map[string]any{"plaintext": base64.StdEncoding.EncodeToString(plaintext)}}, nil
}

// rewrap declares no associated_data field, as in Vault and OpenBao: the
// framework ignores unknown fields and says so in a warning.
func (s *Server) rewrap(name string, body map[string]any) (map[string]any, *apiError) {
	k, apiErr := s.transitKey(name)
	if apiErr != nil {
		return nil, apiErr
	}
	var ignored []string
	for field := range body {
		if !slices.Contains([]string{"ciphertext", "context", "nonce", "key_version", "batch_input"}, field) {
			ignored = append(ignored, field)
		}
	}
	slices.Sort(ignored)
	ciphertext, _ := body["ciphertext"].(string)
	if ciphertext == "" {
		return nil, fail(http.StatusBadRequest, "missing ciphertext to decrypt")
	}
	context, apiErr := decodeField(body, "context")
	if apiErr != nil {
		return nil, apiErr
	}
	plaintext, apiErr := k.open(ciphertext, context, nil)
	if apiErr != nil {
		return nil, apiErr
	}
	ct, v, apiErr := k.seal(plaintext, context, nil)
	clear(plaintext)
	if apiErr != nil {
		return nil, apiErr
	}
	resp := map[string]any{"data": map[string]any{"ciphertext": ct, "key_version": v}}
	if len(ignored) > 0 {
		resp["warnings"] = []string{fmt.Sprintf("Endpoint ignored these unrecognized parameters: %v", ignored)}
	}
	return resp, nil
}

func (s *Server) readKey(name string) (map[string]any, *apiError) {
	k := s.keys[name]
	if k == nil {
		return nil, fail(http.StatusNotFound)
	}
	versions := map[string]int64{}
	for i, c := range k.created {
		versions[strconv.Itoa(i+1)] = c.Unix()
	}
	data := map[string]any{
		"name":                   name,
		"type":                   "aes256-gcm96",
		"derived":                k.derived,
		"latest_version":         len(k.versions),
		"min_decryption_version": k.minDecryption,
		"min_encryption_version": 0,
		"keys":                   versions,
		"deletion_allowed":       false,
		"exportable":             false,
		"allow_plaintext_backup": false,
		"supports_encryption":    true,
		"supports_decryption":    true,
		"supports_derivation":    true,
		"supports_signing":       false,
		"convergent_encryption":  false,
		"auto_rotate_period":     0,
		"imported_key":           false,
	}
	if k.derived {
		data["kdf"] = "hkdf_sha256"
	}
	return map[string]any{"data": data}, nil
}

func (s *Server) createHTTP(name string, body map[string]any) (map[string]any, *apiError) {
	if typ, _ := body["type"].(string); typ != "" && typ != "aes256-gcm96" {
		return nil, fail(http.StatusBadRequest, fmt.Sprintf("unknown key type: %s (the fake only has aes256-gcm96)", typ))
	}
	if _, ok := s.keys[name]; ok {
		return nil, nil // Vault answers an idempotent create with no content
	}
	derived, _ := body["derived"].(bool)
	s.keys[name] = newKey(derived)
	return nil, nil
}

func (s *Server) rotateHTTP(name string) (map[string]any, *apiError) {
	k := s.keys[name]
	if k == nil {
		return nil, fail(http.StatusBadRequest, "key not found")
	}
	k.rotate()
	s.event("rotate " + name)
	return s.readKey(name)
}

func (s *Server) configHTTP(name string, body map[string]any) (map[string]any, *apiError) {
	k := s.keys[name]
	if k == nil {
		return nil, fail(http.StatusBadRequest, "no existing key named "+name+" could be found")
	}
	if v, ok := body["min_decryption_version"].(float64); ok {
		if int(v) < 1 || int(v) > len(k.versions) {
			return nil, fail(http.StatusBadRequest, "cannot set min decryption version to a version that does not exist")
		}
		k.minDecryption = int(v)
	}
	return s.readKey(name)
}
