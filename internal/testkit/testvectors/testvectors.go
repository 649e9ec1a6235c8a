// Package testvectors loads the known-answer vectors of the original
// service's wire formats (testdata/legacy-vectors.json, computed with
// WebCrypto; a copy of shared/testdata/legacy-vectors.json).
package testvectors

import (
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"testing"
)

// KEKWrap is a format-1 KEK wrap of a master key.
type KEKWrap struct {
	Name          string `json:"name"`
	KEK           string `json:"kek_base64"`
	KEKID         string `json:"kek_id"`
	FormatVersion int    `json:"format_version"`
	MasterKey     string `json:"master_key_base64"`
	WrapIV        string `json:"wrap_iv"`
	WrappedMK     string `json:"wrapped_mk"`
}

// RecoveryWrap is a browser-built recovery wrap of a master key.
type RecoveryWrap struct {
	Name              string `json:"name"`
	RecoverySecretHex string `json:"recovery_secret_hex"`
	RecoveryCode      string `json:"recovery_code"`
	DerivedWrapKey    string `json:"derived_wrap_key_base64"`
	MasterKey         string `json:"master_key_base64"`
	RecoveryIV        string `json:"recoveryIv"`
	RecoveryWrappedMK string `json:"recoveryWrappedMk"`
}

// Vectors is the whole file.
type Vectors struct {
	KEKWrapV1      []KEKWrap      `json:"kek_wrap_v1"`
	RecoveryWrapV1 []RecoveryWrap `json:"recovery_wrap_v1"`
}

// Path is the vectors file inside the repository.
func Path() string {
	_, here, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(here), "..", "..", "..", "testdata", "legacy-vectors.json")
}

// Load reads the vectors or fails the test.
func Load(t testing.TB) *Vectors {
	t.Helper()
	raw, err := os.ReadFile(Path())
	if err != nil {
		t.Fatalf("testvectors: %v", err)
	}
	var v Vectors
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatalf("testvectors: %v", err)
	}
	if len(v.KEKWrapV1) == 0 || len(v.RecoveryWrapV1) == 0 {
		t.Fatal("testvectors: the file holds no vectors")
	}
	return &v
}
