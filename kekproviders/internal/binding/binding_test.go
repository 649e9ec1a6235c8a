package binding

import (
	"encoding/hex"
	"testing"
)

func TestAADKnownAnswer(t *testing.T) {
	got := hex.EncodeToString(AAD(map[string]string{"user_id": "alice", "kek_id": "env-v1", "format": "2"}))
	want := "00000006" + hex.EncodeToString([]byte("format")) + "00000001" + hex.EncodeToString([]byte("2")) +
		"00000006" + hex.EncodeToString([]byte("kek_id")) + "00000006" + hex.EncodeToString([]byte("env-v1")) +
		"00000007" + hex.EncodeToString([]byte("user_id")) + "00000005" + hex.EncodeToString([]byte("alice"))
	if got != want {
		t.Fatalf("AAD encoding changed:\n got %s\nwant %s", got, want)
	}
}

func TestAADEmptyIsNil(t *testing.T) {
	if AAD(nil) != nil || AAD(map[string]string{}) != nil {
		t.Fatal("an empty binding must encode to no AAD")
	}
}

func TestAADIsInjective(t *testing.T) {
	// Moving bytes between a key and a value, or between two values,
	// must change the encoding.
	a := AAD(map[string]string{"user_id": "ab", "kek_id": "c"})
	b := AAD(map[string]string{"user_id": "a", "kek_id": "bc"})
	if string(a) == string(b) {
		t.Fatal("different bindings encode alike")
	}
}
