package vaultapi

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// TestServiceKeyMatchesOnlyTheKey: the constant-time comparison (see
// internal/securityaudit) is still a correct one: the key itself matches,
// and a key of another length, a prefix, an extension, a case change or
// nothing do not.
func TestServiceKeyMatchesOnlyTheKey(t *testing.T) {
	t.Parallel()
	const key = "mana-service-key-0123456789abcdef"
	k := newServiceKey(key)
	require.True(t, k.matches(key))
	for _, wrong := range []string{"", key[:len(key)-1], key + "0", "MANA-SERVICE-KEY-0123456789ABCDEF", key[:len(key)-1] + "e", " " + key} {
		require.False(t, k.matches(wrong), "%q", wrong)
	}
}
