package broker

import (
	"context"
	"encoding/base64"
	"errors"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/internal/testkit/testvectors"
	"github.com/keybroker/keybroker/kek"
	"github.com/keybroker/keybroker/kekproviders/localkek"
)

func mustKEK(t testing.TB, id string, key []byte) *localkek.KEK {
	t.Helper()
	k, err := localkek.New(id, key, true)
	require.NoError(t, err)
	return k
}

func randomKEK(t *testing.T, id string) *localkek.KEK {
	return mustKEK(t, id, newMasterKey())
}

func TestLegacyFormatOneVectorsUnwrap(t *testing.T) {
	for _, v := range testvectors.Load(t).KEKWrapV1 {
		t.Run(v.Name, func(t *testing.T) {
			key, err := base64.StdEncoding.DecodeString(v.KEK)
			require.NoError(t, err)
			ring, err := NewKeyring(mustKEK(t, v.KEKID, key))
			require.NoError(t, err)
			row := &Vault{UserID: "legacy-user", WrappedMK: &v.WrappedMK, WrapIV: &v.WrapIV, FormatVersion: v.FormatVersion, KEKID: v.KEKID}
			mk, err := ring.open(context.Background(), row.UserID, row)
			require.NoError(t, err)
			require.Equal(t, v.MasterKey, base64.StdEncoding.EncodeToString(mk))
		})
	}
}

func TestBoundWrapRefusesAnotherUser(t *testing.T) {
	ctx := context.Background()
	ring, err := NewKeyring(randomKEK(t, "k1"))
	require.NoError(t, err)
	mk := newMasterKey()
	wrapped, kekID, err := ring.seal(ctx, "alice", mk)
	require.NoError(t, err)
	row := &Vault{UserID: "alice"}
	encodeBoundWrap(row, wrapped, kekID)

	got, err := ring.open(ctx, "alice", row)
	require.NoError(t, err)
	require.Equal(t, mk, got)

	_, err = ring.open(ctx, "mallory", row)
	require.ErrorIs(t, err, ErrUnwrapFailed, "a wrap copied to another user's row must not open")

	relabelled := *row
	relabelled.FormatVersion = FormatLegacy
	iv := base64.StdEncoding.EncodeToString(make([]byte, LegacyIVSize))
	relabelled.WrapIV = &iv
	_, err = ring.open(ctx, "alice", &relabelled)
	require.ErrorIs(t, err, ErrUnwrapFailed, "relabelling the format must not open")
}

func TestBoundWrapRefusesRelabelledKEK(t *testing.T) {
	ctx := context.Background()
	key := newMasterKey()
	// The same key material under two ids: the id is bound, so a row
	// relabelled to the other id does not open.
	ring, err := NewKeyring(mustKEK(t, "a", key), mustKEK(t, "b", key))
	require.NoError(t, err)
	wrapped, kekID, err := ring.seal(ctx, "alice", newMasterKey())
	require.NoError(t, err)
	row := &Vault{}
	encodeBoundWrap(row, wrapped, kekID)
	row.KEKID = "b"
	_, err = ring.open(ctx, "alice", row)
	require.ErrorIs(t, err, ErrUnwrapFailed)
}

func TestUnknownKEKIsTypedError(t *testing.T) {
	ring, err := NewKeyring(randomKEK(t, "k1"))
	require.NoError(t, err)
	w, iv := "AAAA", ""
	_, err = ring.open(context.Background(), "alice", &Vault{WrappedMK: &w, WrapIV: &iv, FormatVersion: FormatBound, KEKID: "gone"})
	require.ErrorIs(t, err, ErrUnknownKEK)
}

func TestCorruptRowsFailCleanly(t *testing.T) {
	ring, err := NewKeyring(randomKEK(t, "env-v1"))
	require.NoError(t, err)
	str := func(s string) *string { return &s }
	for name, row := range map[string]*Vault{
		"NotBase64":        {WrappedMK: str("%%%"), WrapIV: str(""), FormatVersion: FormatBound, KEKID: "env-v1"},
		"ShortCiphertext":  {WrappedMK: str("AAAA"), WrapIV: str(""), FormatVersion: FormatBound, KEKID: "env-v1"},
		"LegacyBadIV":      {WrappedMK: str("AAAA"), WrapIV: str("AAAA"), FormatVersion: FormatLegacy, KEKID: "env-v1"},
		"LegacyMissingIV":  {WrappedMK: str("AAAA"), FormatVersion: FormatLegacy, KEKID: "env-v1"},
		"UnknownFormat":    {WrappedMK: str("AAAA"), WrapIV: str(""), FormatVersion: 9, KEKID: "env-v1"},
		"NoServerWrap":     {FormatVersion: FormatBound, KEKID: "env-v1"},
		"TamperedLegacyIV": {WrappedMK: str("4D+P+dStyVxW1bw987WfNxMzK0pqZW+oY11Bh2UZ9y+XUOjg8d6wXRmGtJLnT7jN"), WrapIV: str("AgTOklhjA+P+5gA/"), FormatVersion: FormatLegacy, KEKID: "env-v1"},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := ring.open(context.Background(), "alice", row)
			require.ErrorIs(t, err, ErrUnwrapFailed)
		})
	}
}

func TestKeyringRejectsDuplicateIDs(t *testing.T) {
	_, err := NewKeyring(randomKEK(t, "same"), randomKEK(t, "same"))
	require.Error(t, err)
	_, err = NewKeyring(nil)
	require.Error(t, err)
}

func TestKeyCheckValue(t *testing.T) {
	mk := newMasterKey()
	kcv := KeyCheckValue(mk)
	require.True(t, keyCheckMatches(mk, kcv))
	other := append([]byte(nil), mk...)
	other[0] ^= 1
	require.False(t, keyCheckMatches(other, kcv))
	require.NotContains(t, kcv, base64.StdEncoding.EncodeToString(mk))
}

func TestKEKErrorClassification(t *testing.T) {
	denied := classifyKEKError(ErrUnwrapFailed, kek.Denied(errors.New("AccessDeniedException")))
	require.ErrorIs(t, denied, ErrKEKDenied)
	require.NotErrorIs(t, denied, ErrUnwrapFailed, "a refusal is not corrupt data")
	require.False(t, IsUnavailable(denied), "a refusal is not an outage: cached keys must not survive it")
	require.True(t, IsUnavailable(classifyKEKError(ErrUnwrapFailed, kek.Unavailable(errors.New("connection refused")))))
	require.True(t, IsUnavailable(classifyKEKError(ErrUnwrapFailed, context.DeadlineExceeded)))
	notLoaded := &UnavailableError{Dependency: DependencyKEK, Err: errors.New("data keys not loaded yet")}
	require.Same(t, notLoaded, classifyKEKError(ErrUnwrapFailed, notLoaded), "the domain's own outage is kept as it is")
	err := classifyKEKError(ErrUnwrapFailed, errors.New("cipher: message authentication failed"))
	require.False(t, IsUnavailable(err))
	require.ErrorIs(t, err, ErrUnwrapFailed)
}
