package kektest

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/kek"
)

// testRewrapNeedsVersions: the re-wrap job moves a wrap with Rewrap only
// when Versioner says it was made by an older key version; a Rewrapper
// without it would never be called.
func testRewrapNeedsVersions(t *testing.T, s Subject) {
	_, rewraps := s.KEK.(kek.Rewrapper)
	_, versions := s.KEK.(kek.Versioner)
	require.False(t, rewraps && !versions, "%T has Rewrap but no KeyVersion and LatestVersion: nothing would call it", s.KEK)
}

// testKeyRotation: after a new key version, old wraps still open and new
// ones are made by it; where the provider reports versions, the old wrap
// is due and Rewrap moves it to the newest version under the same
// binding, which it still authenticates.
func testKeyRotation(t *testing.T, s Subject) {
	if s.Rotate == nil {
		t.Skip("SKIP: no key version this suite can add for this provider (a local key, or AWS KMS on local-kms)")
	}
	ctx := Context(t, opTimeout)
	b := Binding("alice", s.KEK.ID())
	plaintext := randomBytes(32)
	old, err := s.KEK.Wrap(ctx, plaintext, b)
	require.NoError(t, err)
	s.Rotate(t)
	fresh, err := s.KEK.Wrap(ctx, plaintext, b)
	require.NoError(t, err)
	for _, wrapped := range [][]byte{old, fresh} {
		back, err := s.KEK.Unwrap(ctx, wrapped, b)
		require.NoError(t, err, "a new key version must leave old wraps opening")
		require.Equal(t, plaintext, back)
	}

	v, ok := s.KEK.(kek.Versioner)
	if !ok {
		return // the backend picks the version itself; nothing is due
	}
	latest, err := v.LatestVersion(ctx)
	require.NoError(t, err)
	oldVersion, err := v.KeyVersion(old)
	require.NoError(t, err)
	freshVersion, err := v.KeyVersion(fresh)
	require.NoError(t, err)
	require.Less(t, oldVersion, latest, "the old wrap is due")
	require.Equal(t, latest, freshVersion, "new wraps use the newest version")

	rw, ok := s.KEK.(kek.Rewrapper)
	if !ok {
		return
	}
	moved, err := rw.Rewrap(ctx, old, b)
	require.NoError(t, err)
	movedVersion, err := v.KeyVersion(moved)
	require.NoError(t, err)
	require.Equal(t, latest, movedVersion)
	back, err := s.KEK.Unwrap(ctx, moved, b)
	require.NoError(t, err)
	require.Equal(t, plaintext, back)
	_, err = s.KEK.Unwrap(ctx, moved, Binding("mallory", s.KEK.ID()))
	RequireBadData(t, err)
	_, err = rw.Rewrap(ctx, old, Binding("mallory", s.KEK.ID()))
	RequireBadData(t, err)
}
