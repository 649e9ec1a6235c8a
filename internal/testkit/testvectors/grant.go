package testvectors

import (
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"testing"
)

// GrantDerivation is the derivation of a mission grant as the upstream
// wrote it in its response.
type GrantDerivation struct {
	Version   string   `json:"version"`
	MissionID string   `json:"missionId"`
	Tables    []string `json:"tables"`
	RecordIDs []string `json:"recordIds"`
}

// GrantVector is one mission data key derivation, computed with
// WebCrypto: the request's scope, the canonical info string and the key.
type GrantVector struct {
	Name       string          `json:"name"`
	MasterKey  string          `json:"master_key_base64"`
	Derivation GrantDerivation `json:"derivation"`
	Info       string          `json:"info"`
	MDK        string          `json:"mdk_base64"`
}

// GrantRSAOAEP is the upstream's test recipient and one wrap of the
// mission data key of the vector named Of.
type GrantRSAOAEP struct {
	PublicKeyPEM  string `json:"public_key_spki_pem"`
	PrivateKeyPEM string `json:"private_key_pkcs8_pem"`
	WrappedMDK    string `json:"wrapped_mdk_base64"`
	Of            string `json:"of"`
}

// GrantVectors is testdata/grant-vectors.json.
type GrantVectors struct {
	Vectors []GrantVector `json:"vectors"`
	RSAOAEP GrantRSAOAEP  `json:"rsa_oaep"`
}

// GrantPath is the grant vectors file inside the repository (a copy of
// shared/testdata/grant-vectors.json).
func GrantPath() string {
	_, here, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(here), "..", "..", "..", "testdata", "grant-vectors.json")
}

// LoadGrant reads the grant vectors or fails the test.
func LoadGrant(t testing.TB) *GrantVectors {
	t.Helper()
	raw, err := os.ReadFile(GrantPath())
	if err != nil {
		t.Fatalf("testvectors: %v", err)
	}
	var v GrantVectors
	if err := json.Unmarshal(raw, &v); err != nil {
		t.Fatalf("testvectors: %v", err)
	}
	if len(v.Vectors) == 0 || v.RSAOAEP.WrappedMDK == "" {
		t.Fatal("testvectors: the grant file holds no vectors")
	}
	return &v
}

// Grant returns the vector named name or fails the test.
func (v *GrantVectors) Grant(t testing.TB, name string) GrantVector {
	t.Helper()
	for _, g := range v.Vectors {
		if g.Name == name {
			return g
		}
	}
	t.Fatalf("testvectors: no grant vector %q", name)
	return GrantVector{}
}
