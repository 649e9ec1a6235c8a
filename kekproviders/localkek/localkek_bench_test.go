package localkek_test

import (
	"context"
	"crypto/rand"
	"testing"

	"github.com/keybroker/keybroker/kekproviders/localkek"
)

// binding is the shape of a format-2 binding context: user, KEK id, format.
var binding = map[string]string{"user_id": "bench-user-1", "kek_id": "env-v1", "format": "2"}

func benchKEK(b *testing.B) *localkek.KEK {
	b.Helper()
	key := make([]byte, localkek.KeySize)
	rand.Read(key)
	kek, err := localkek.New("env-v1", key, false)
	if err != nil {
		b.Fatal(err)
	}
	return kek
}

// BenchmarkWrap wraps a 32-byte master key bound to its row.
func BenchmarkWrap(b *testing.B) {
	kek := benchKEK(b)
	mk := make([]byte, 32)
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := kek.Wrap(ctx, mk, binding); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkUnwrap opens a bound wrap: the KEK work of every GET /key.
func BenchmarkUnwrap(b *testing.B) {
	kek := benchKEK(b)
	ctx := context.Background()
	wrapped, err := kek.Wrap(ctx, make([]byte, 32), binding)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := kek.Unwrap(ctx, wrapped, binding); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkUnwrapLegacy opens a format-1 wrap (no AAD).
func BenchmarkUnwrapLegacy(b *testing.B) {
	kek := benchKEK(b)
	ctx := context.Background()
	wrapped, err := kek.Wrap(ctx, make([]byte, 32), nil)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := kek.Unwrap(ctx, wrapped, nil); err != nil {
			b.Fatal(err)
		}
	}
}
