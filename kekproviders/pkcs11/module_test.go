//go:build cgo

package pkcs11_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/kekproviders"
	"github.com/keybroker/keybroker/kekproviders/kektest"
	"github.com/keybroker/keybroker/kekproviders/pkcs11"
)

// TestModuleIsShared: KEKs over one module share its one initialization;
// the last to close finalizes it, and it can be loaded again. The module
// is a copy of SoftHSM's, loaded by no one else in this process.
func TestModuleIsShared(t *testing.T) {
	t.Parallel()
	tok := tokenWithKey(t)
	src, err := os.ReadFile(tok.ModulePath)
	require.NoError(t, err)
	dir, err := filepath.EvalSymlinks(t.TempDir())
	require.NoError(t, err)
	copyPath := filepath.Join(dir, "libsofthsm2-copy.so")
	require.NoError(t, os.WriteFile(copyPath, src, 0o755))

	open := func(id string) *pkcs11.KEK {
		cfg := config(tok, "kek", id)
		cfg.ModulePath = copyPath
		k, err := pkcs11.New(kektest.Context(t, opTimeout), cfg)
		require.NoError(t, err)
		return k
	}
	ctx := kektest.Context(t, opTimeout)
	first, second := open("hsm-a"), open("hsm-b")
	require.Equal(t, 2, pkcs11.ModuleRefs(copyPath))
	require.NoError(t, first.Close())
	require.Equal(t, 1, pkcs11.ModuleRefs(copyPath))
	require.NoError(t, second.Status(ctx), "the other KEK still works")
	require.NoError(t, second.Close())
	require.Equal(t, 0, pkcs11.ModuleRefs(copyPath), "finalized and unloaded")

	again := open("hsm-c")
	defer again.Close()
	require.NoError(t, kekproviders.Check(ctx, again, nil).Err())
}

// TestWritableModuleIsRefused: a module file others may write would run
// their code inside keybroker, next to every key.
func TestWritableModuleIsRefused(t *testing.T) {
	t.Parallel()
	tok := tokenWithKey(t)
	src, err := os.ReadFile(tok.ModulePath)
	require.NoError(t, err)
	copyPath := filepath.Join(t.TempDir(), "libsofthsm2.so")
	require.NoError(t, os.WriteFile(copyPath, src, 0o755))
	require.NoError(t, os.Chmod(copyPath, 0o777))
	cfg := config(tok, "kek", "hsm-writable")
	cfg.ModulePath = copyPath
	_, err = pkcs11.New(kektest.Context(t, opTimeout), cfg)
	require.ErrorContains(t, err, "chmod go-w")
	require.Equal(t, 0, pkcs11.ModuleRefs(copyPath), "never loaded")
}
