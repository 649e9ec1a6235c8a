package broker

import (
	"context"
	"testing"
	"time"
)

func benchKeyring(b *testing.B) *Keyring {
	b.Helper()
	ring, err := NewKeyring(mustKEK(b, "env-v1", newMasterKey()))
	if err != nil {
		b.Fatal(err)
	}
	return ring
}

// BenchmarkKeyringSeal is the wrap of a new master key: wrap under the
// active KEK, then the check that the fresh wrap opens to the same key.
func BenchmarkKeyringSeal(b *testing.B) {
	ring := benchKeyring(b)
	mk := newMasterKey()
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := ring.seal(ctx, "bench-user-1", mk); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkKeyringOpen is the unwrap of GET /key from a stored row:
// base64 decode, KEK lookup, binding context, AES-GCM open.
func BenchmarkKeyringOpen(b *testing.B) {
	ring := benchKeyring(b)
	ctx := context.Background()
	wrapped, kekID, err := ring.seal(ctx, "bench-user-1", newMasterKey())
	if err != nil {
		b.Fatal(err)
	}
	row := &Vault{UserID: "bench-user-1"}
	encodeBoundWrap(row, wrapped, kekID)
	b.ReportAllocs()
	for b.Loop() {
		mk, err := ring.open(ctx, row.UserID, row)
		if err != nil {
			b.Fatal(err)
		}
		wipe(mk)
	}
}

// BenchmarkNewAuditID is the id of every audit row.
func BenchmarkNewAuditID(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		_ = newAuditID(time.Now())
	}
}
