package client

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"encoding/base64"
	"encoding/hex"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/internal/testkit/testvectors"
)

func b64(t *testing.T, s string) []byte {
	t.Helper()
	b, err := base64.StdEncoding.DecodeString(s)
	require.NoError(t, err)
	return b
}

// TestRecoveryVectors checks every browser-made recovery vector: code and
// secret both ways, the derived key, and the unwrap of the browser's blob.
func TestRecoveryVectors(t *testing.T) {
	t.Parallel()
	vectors := testvectors.Load(t).RecoveryWrapV1
	require.NotEmpty(t, vectors)
	for _, v := range vectors {
		t.Run(v.Name, func(t *testing.T) {
			t.Parallel()
			secret, err := hex.DecodeString(v.RecoverySecretHex)
			require.NoError(t, err)

			require.Equal(t, v.RecoveryCode, formatRecoveryCode(secret), "secret → code")
			parsed, err := ParseRecoveryCode(v.RecoveryCode)
			require.NoError(t, err)
			require.Equal(t, secret, parsed, "code → secret")

			require.Equal(t, b64(t, v.DerivedWrapKey), DeriveRecoveryKey(secret), "HKDF-SHA256, empty salt, info mana-recovery-v1")

			mk, err := UnwrapWithRecovery(b64(t, v.RecoveryWrappedMK), b64(t, v.RecoveryIV), parsed)
			require.NoError(t, err)
			require.Equal(t, b64(t, v.MasterKey), mk, "the browser's blob opens to its master key")

			// Our wrap of the vector's key opens with the vector's derived
			// key through plain AES-GCM, as WebCrypto would open it.
			wrapped, iv, err := WrapWithRecovery(mk, secret)
			require.NoError(t, err)
			require.Len(t, wrapped, RecoveryWrapSize)
			require.Len(t, iv, RecoveryIVSize)
			block, err := aes.NewCipher(b64(t, v.DerivedWrapKey))
			require.NoError(t, err)
			gcm, err := cipher.NewGCM(block)
			require.NoError(t, err)
			opened, err := gcm.Open(nil, iv, wrapped, nil)
			require.NoError(t, err)
			require.Equal(t, mk, opened)

			// The same key under another code does not open.
			other, _ := NewRecoveryCode()
			_, err = UnwrapWithRecovery(b64(t, v.RecoveryWrappedMK), b64(t, v.RecoveryIV), other)
			require.ErrorIs(t, err, ErrWrongRecoveryCode)
		})
	}
}

func TestParseRecoveryCodeTolerance(t *testing.T) {
	t.Parallel()
	v := testvectors.Load(t).RecoveryWrapV1[0]
	want, err := hex.DecodeString(v.RecoverySecretHex)
	require.NoError(t, err)
	for name, code := range map[string]string{
		"Canonical":      v.RecoveryCode,
		"LowerCase":      strings.ToLower(v.RecoveryCode),
		"SpacesForDash":  strings.ReplaceAll(v.RecoveryCode, "-", " "),
		"NoSeparators":   strings.ReplaceAll(v.RecoveryCode, "-", ""),
		"MixedAndPadded": "  " + strings.ToLower(v.RecoveryCode[:20]) + " - " + v.RecoveryCode[20:] + "\n",
		"LineBreaks":     strings.ReplaceAll(v.RecoveryCode, "-", "\r\n"),
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			got, err := ParseRecoveryCode(code)
			require.NoError(t, err)
			require.Equal(t, want, got)
		})
	}
}

func TestParseRecoveryCodeStrictness(t *testing.T) {
	t.Parallel()
	code := testvectors.Load(t).RecoveryWrapV1[0].RecoveryCode
	for name, tc := range map[string]struct{ code, msg string }{
		"Empty":         {"", "it has 0 hexadecimal digits, want 64"},
		"OneDigitShort": {code[:len(code)-1], "it has 63 hexadecimal digits"},
		"OneDigitLong":  {code + "A", "it has 65 hexadecimal digits"},
		"NotHex":        {"G" + code[1:], "position 1 is not a hexadecimal digit"},
		"Underscore":    {strings.ReplaceAll(code, "-", "_"), "position 5 is not a hexadecimal digit"},
		"FullWidth":     {"１" + code[1:], "position 1 is not"},
		"Base64":        {base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{1}, 32)), "not a hexadecimal digit"},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			secret, err := ParseRecoveryCode(tc.code)
			require.Nil(t, secret)
			require.ErrorContains(t, err, tc.msg)
			if len(tc.code) > 8 {
				require.NotContains(t, err.Error(), tc.code[2:8], "the error must not repeat the code")
			}
		})
	}
}

func TestNewRecoveryCodeShape(t *testing.T) {
	t.Parallel()
	seen := map[string]bool{}
	for range 20 {
		secret, code := NewRecoveryCode()
		require.Len(t, secret, RecoverySecretSize)
		groups := strings.Split(code, "-")
		require.Len(t, groups, 16)
		for _, g := range groups {
			require.Regexp(t, `^[0-9A-F]{4}$`, g)
		}
		parsed, err := ParseRecoveryCode(code)
		require.NoError(t, err)
		require.Equal(t, secret, parsed)
		require.False(t, seen[code], "codes must be random")
		seen[code] = true
	}
}

func TestWrapRoundTripAndBadInput(t *testing.T) {
	t.Parallel()
	secret, _ := NewRecoveryCode()
	mk := bytes.Repeat([]byte{0x42}, MasterKeySize)
	w1, iv1, err := WrapWithRecovery(mk, secret)
	require.NoError(t, err)
	w2, iv2, err := WrapWithRecovery(mk, secret)
	require.NoError(t, err)
	require.NotEqual(t, iv1, iv2, "every wrap has a fresh IV")
	require.NotEqual(t, w1, w2)
	for _, pair := range [][2][]byte{{w1, iv1}, {w2, iv2}} {
		got, err := UnwrapWithRecovery(pair[0], pair[1], secret)
		require.NoError(t, err)
		require.Equal(t, mk, got)
	}

	tampered := bytes.Clone(w1)
	tampered[0] ^= 1
	_, err = UnwrapWithRecovery(tampered, iv1, secret)
	require.ErrorIs(t, err, ErrWrongRecoveryCode)

	_, _, err = WrapWithRecovery(mk[:31], secret)
	require.ErrorContains(t, err, "master key is 32 bytes, got 31")
	_, _, err = WrapWithRecovery(mk, secret[:16])
	require.ErrorContains(t, err, "recovery secret is 32 bytes, got 16")
	_, err = UnwrapWithRecovery(w1[:47], iv1, secret)
	require.ErrorContains(t, err, "48 bytes, got 47")
	_, err = UnwrapWithRecovery(w1, iv1[:11], secret)
	require.ErrorContains(t, err, "12 bytes, got 11")
}
