package kektest

import (
	"bytes"
	"maps"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/kek"
)

func testID(t *testing.T, s Subject) {
	require.NotEmpty(t, s.KEK.ID())
	require.Equal(t, s.KEK.ID(), s.KEK.ID(), "ID must be stable")
}

func testRoundTrip(t *testing.T, s Subject) {
	ctx := Context(t, opTimeout)
	cases := []struct {
		name    string
		size    int
		binding map[string]string
	}{
		{"MasterKeyBound", 32, Binding("alice", s.KEK.ID())},
		{"MasterKeyUnbound", 32, nil},
		{"OneByte", 1, Binding("bob", s.KEK.ID())},
		{"Larger", 256, Binding("carol", s.KEK.ID())},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			plaintext := randomBytes(tc.size)
			wrapped, err := s.KEK.Wrap(ctx, plaintext, tc.binding)
			require.NoError(t, err)
			require.NotEmpty(t, wrapped)
			if tc.size >= 16 {
				require.False(t, bytes.Contains(wrapped, plaintext), "the wrap contains the plaintext")
			}
			back, err := s.KEK.Unwrap(ctx, wrapped, tc.binding)
			require.NoError(t, err)
			require.Equal(t, plaintext, back)
		})
	}
}

func testRandomised(t *testing.T, s Subject) {
	ctx := Context(t, opTimeout)
	plaintext := randomBytes(32)
	b := Binding("alice", s.KEK.ID())
	first, err := s.KEK.Wrap(ctx, plaintext, b)
	require.NoError(t, err)
	second, err := s.KEK.Wrap(ctx, plaintext, b)
	require.NoError(t, err)
	require.NotEqual(t, first, second, "two wraps of the same key are identical: the wrap leaks equality")
}

func testInputsUntouched(t *testing.T, s Subject) {
	ctx := Context(t, opTimeout)
	plaintext := randomBytes(32)
	keep := bytes.Clone(plaintext)
	b := Binding("alice", s.KEK.ID())
	keepBinding := maps.Clone(b)
	wrapped, err := s.KEK.Wrap(ctx, plaintext, b)
	require.NoError(t, err)
	require.Equal(t, keep, plaintext, "Wrap modified the plaintext")
	require.Equal(t, keepBinding, b, "Wrap modified the binding")
	keepWrapped := bytes.Clone(wrapped)
	_, err = s.KEK.Unwrap(ctx, wrapped, b)
	require.NoError(t, err)
	require.Equal(t, keepWrapped, wrapped, "Unwrap modified the ciphertext")
	require.Equal(t, keepBinding, b, "Unwrap modified the binding")
}

func testDifferentBinding(t *testing.T, s Subject) {
	ctx := Context(t, opTimeout)
	base := Binding("alice", s.KEK.ID())
	wrapped, err := s.KEK.Wrap(ctx, randomBytes(32), base)
	require.NoError(t, err)

	variants := map[string]func(b map[string]string){
		"OtherUser":     func(b map[string]string) { b[kek.BindingUserID] = "mallory" },
		"UserPrefix":    func(b map[string]string) { b[kek.BindingUserID] = "alic" },
		"OtherKEKID":    func(b map[string]string) { b[kek.BindingKEKID] = "other-kek" },
		"OtherFormat":   func(b map[string]string) { b[kek.BindingFormat] = "1" },
		"ExtraKey":      func(b map[string]string) { b["tenant"] = "x" },
		"MissingKey":    func(b map[string]string) { delete(b, kek.BindingFormat) },
		"MovedBoundary": func(b map[string]string) { b[kek.BindingUserID] = "alice2"; b[kek.BindingFormat] = "" },
	}
	for name, mutate := range variants {
		t.Run(name, func(t *testing.T) {
			b := maps.Clone(base)
			mutate(b)
			_, err := s.KEK.Unwrap(ctx, wrapped, b)
			RequireBadData(t, err)
		})
	}
}

func testEmptyBinding(t *testing.T, s Subject) {
	ctx := Context(t, opTimeout)
	bound := Binding("alice", s.KEK.ID())

	unboundWrap, err := s.KEK.Wrap(ctx, randomBytes(32), nil)
	require.NoError(t, err)
	_, err = s.KEK.Unwrap(ctx, unboundWrap, bound)
	RequireBadData(t, err)
	_, err = s.KEK.Unwrap(ctx, unboundWrap, map[string]string{})
	require.NoError(t, err, "a nil and an empty binding must mean the same")

	boundWrap, err := s.KEK.Wrap(ctx, randomBytes(32), bound)
	require.NoError(t, err)
	_, err = s.KEK.Unwrap(ctx, boundWrap, nil)
	RequireBadData(t, err)
}

func testForeignKey(t *testing.T, s Subject) {
	ctx := Context(t, opTimeout)
	b := Binding("alice", s.KEK.ID())
	foreign, err := s.Other.Wrap(ctx, randomBytes(32), b)
	require.NoError(t, err)
	_, err = s.KEK.Unwrap(ctx, foreign, b)
	RequireBadData(t, err)

	own, err := s.KEK.Wrap(ctx, randomBytes(32), b)
	require.NoError(t, err)
	_, err = s.Other.Unwrap(ctx, own, b)
	RequireBadData(t, err)
}

func testCorrupt(t *testing.T, s Subject) {
	ctx := Context(t, opTimeout)
	b := Binding("alice", s.KEK.ID())
	wrapped, err := s.KEK.Wrap(ctx, randomBytes(32), b)
	require.NoError(t, err)

	flipped := bytes.Clone(wrapped)
	flipped[len(flipped)-1] ^= 0x01
	cases := map[string][]byte{
		"Empty":       nil,
		"LastBitFlip": flipped,
		"Truncated":   wrapped[:len(wrapped)-1],
		"Doubled":     append(bytes.Clone(wrapped), wrapped...),
	}
	for name, ciphertext := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := s.KEK.Unwrap(ctx, ciphertext, b)
			RequireBadData(t, err)
		})
	}
}
