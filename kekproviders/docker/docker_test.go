package docker_test

import (
	"crypto/rand"
	"encoding/base64"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/kekproviders/docker"
	"github.com/keybroker/keybroker/kekproviders/kektest"
)

func writeSecret(t *testing.T, dir, name string) {
	t.Helper()
	key := make([]byte, 32)
	rand.Read(key)
	require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte(base64.StdEncoding.EncodeToString(key)), 0o400))
}

func TestConformance(t *testing.T) {
	t.Parallel()
	kektest.Run(t, func(t *testing.T) kektest.Subject {
		dir := t.TempDir()
		writeSecret(t, dir, "keybroker_kek")
		writeSecret(t, dir, "old_kek")
		kek, err := docker.Open(docker.Config{ID: "docker-1", Name: "keybroker_kek", Directory: dir})
		require.NoError(t, err)
		other, err := docker.Open(docker.Config{ID: "docker-0", Name: "old_kek", Directory: dir})
		require.NoError(t, err)
		return kektest.Subject{KEK: kek, Other: other}
	})
}

func TestMissingSecret(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	_, err := docker.Open(docker.Config{ID: "docker-1", Name: "keybroker_kek", Directory: dir})
	require.ErrorContains(t, err, `no secret "keybroker_kek" at `+filepath.Join(dir, "keybroker_kek"))
}

func TestDefaultDirectory(t *testing.T) {
	t.Parallel()
	// Nothing mounts secrets on the test machine, so the default path
	// shows up in the error.
	if _, err := os.Stat(docker.DefaultDirectory + "/keybroker-test-absent"); err == nil {
		t.Skip("SKIP: a secret of that name exists on this machine")
	}
	_, err := docker.Open(docker.Config{ID: "docker-1", Name: "keybroker-test-absent"})
	require.ErrorContains(t, err, "/run/secrets/keybroker-test-absent")
}

func TestNameCannotLeaveTheDirectory(t *testing.T) {
	t.Parallel()
	_, err := docker.Open(docker.Config{ID: "docker-1", Name: "../../etc/shadow", Directory: t.TempDir()})
	require.ErrorContains(t, err, "must not contain '/'")
}
