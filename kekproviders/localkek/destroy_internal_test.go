package localkek

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"reflect"
	"sync"
	"testing"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/kek"
)

// memoryOf returns a copy of the bytes v points to.
func memoryOf(v any) []byte {
	rv := reflect.ValueOf(v)
	return bytes.Clone(unsafe.Slice((*byte)(rv.UnsafePointer()), rv.Type().Elem().Size()))
}

// holdsKey reports whether mem contains key, as bytes or as the
// big-endian 32-bit words an AES key schedule starts with.
func holdsKey(mem, key []byte) bool {
	if bytes.Contains(mem, key) {
		return true
	}
	words := make([]byte, len(key))
	for i := 0; i+4 <= len(key); i += 4 {
		binary.LittleEndian.PutUint32(words[i:], binary.BigEndian.Uint32(key[i:]))
	}
	return bytes.Contains(mem, words)
}

// TestDestroyZeroesTheKeySchedule: the key is in the KEK's cipher state
// until Destroy, and nowhere in it afterwards; calls then fail.
func TestDestroyZeroesTheKeySchedule(t *testing.T) {
	t.Parallel()
	key := make([]byte, KeySize)
	rand.Read(key)
	k, err := New("dk-test", key, false)
	require.NoError(t, err)
	ctx := context.Background()
	wrapped, err := k.Wrap(ctx, []byte("thirty-two bytes of master key!!"), nil)
	require.NoError(t, err)

	aead, block := k.aead, k.block
	require.True(t, holdsKey(memoryOf(block), key), "the AES key schedule starts with the key")
	require.True(t, holdsKey(memoryOf(aead), key), "the GCM state holds a copy of the schedule")

	require.True(t, k.Destroy(), "the cipher state is plain memory on this platform")
	for name, mem := range map[string][]byte{"block": memoryOf(block), "aead": memoryOf(aead)} {
		require.False(t, holdsKey(mem, key), "%s still holds the key", name)
		require.Equal(t, make([]byte, len(mem)), mem, "%s is not zeroed", name)
	}

	_, err = k.Unwrap(ctx, wrapped, nil)
	require.ErrorIs(t, err, ErrDestroyed)
	require.Equal(t, kek.ClassDenied, kek.Classify(err))
	_, err = k.Wrap(ctx, key, nil)
	require.ErrorIs(t, err, ErrDestroyed)
	require.ErrorIs(t, k.Status(ctx), ErrDestroyed)
	require.True(t, k.Destroy(), "a second Destroy is a no-op")
}

// TestDestroyWaitsForCallsInFlight: a wrap either completes under the
// intact key (and opens with it) or fails; never a wrap under a key
// zeroed half-way. Run with -race.
func TestDestroyWaitsForCallsInFlight(t *testing.T) {
	t.Parallel()
	key := make([]byte, KeySize)
	rand.Read(key)
	k, err := New("dk-test", key, false)
	require.NoError(t, err)
	witness, err := New("witness", key, false)
	require.NoError(t, err)
	ctx := context.Background()
	var wg sync.WaitGroup
	results := make(chan []byte, 400)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 100 {
				w, err := k.Wrap(ctx, key, nil)
				if err != nil {
					assert.ErrorIs(t, err, ErrDestroyed)
					return
				}
				results <- w
			}
		}()
	}
	k.Destroy()
	wg.Wait()
	close(results)
	for w := range results {
		pt, err := witness.Unwrap(ctx, w, nil)
		require.NoError(t, err, "every wrap made was made under the real key")
		require.Equal(t, key, pt)
	}
}

func TestPointerFree(t *testing.T) {
	t.Parallel()
	type plain struct {
		a [4]uint32
		b int
	}
	type withPointer struct {
		a [4]uint32
		p *int
	}
	require.True(t, zeroPointee(&plain{b: 1}))
	require.False(t, zeroPointee(&withPointer{}))
	require.False(t, zeroPointee(plain{}), "not a pointer")
	s := "x"
	require.False(t, zeroPointee(&s))
}
