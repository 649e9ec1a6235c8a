package kekproviders_test

import (
	"crypto/rand"
	"encoding/base64"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/kek"
	"github.com/keybroker/keybroker/kekproviders"
	"github.com/keybroker/keybroker/kekproviders/file"
	"github.com/keybroker/keybroker/kekproviders/kektest"
)

func newKeyText() string {
	key := make([]byte, 32)
	rand.Read(key)
	return base64.StdEncoding.EncodeToString(key)
}

func mapEnv(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

// roundTrip proves an opened KEK is usable and carries the expected id,
// and that it says it unwraps locally (kek.LocalUnwrapper) exactly when it
// is a local key, not a network KMS: the fetch path records a local KEK's
// fetch in the commit of its read.
func roundTrip(t *testing.T, k kek.KEK, wantID string, wantLocal bool) {
	t.Helper()
	require.Equal(t, wantID, k.ID())
	local, ok := k.(kek.LocalUnwrapper)
	require.Equal(t, wantLocal, ok && local.Local(), "%s: unwraps locally", wantID)
	res := kekproviders.Check(kektest.Context(t, 10*time.Second), k, nil)
	require.NoError(t, res.Err())
}

func TestOpenLocalProviders(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	credDir := filepath.Join(dir, "credentials")
	secretsDir := filepath.Join(dir, "secrets")
	require.NoError(t, os.Mkdir(credDir, 0o700))
	require.NoError(t, os.Mkdir(secretsDir, 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "kek.b64"), []byte(newKeyText()), 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(credDir, "keybroker-kek"), []byte(newKeyText()), 0o400))
	require.NoError(t, os.WriteFile(filepath.Join(secretsDir, "keybroker_kek"), []byte(newKeyText()), 0o400))

	opener := kekproviders.Opener{
		Getenv: mapEnv(map[string]string{
			"MANA_AUTH_KEK":         newKeyText(),
			"OTHER_KEK":             newKeyText(),
			"CREDENTIALS_DIRECTORY": credDir,
		}),
		DockerSecretsDir: secretsDir,
	}
	cases := []struct{ uri, id string }{
		{"env://MANA_AUTH_KEK", "env-v1"},
		{"env://OTHER_KEK?id=env-v2", "env-v2"},
		{"file://" + filepath.Join(dir, "kek.b64") + "?id=file-1", "file-1"},
		{"systemd-credential://keybroker-kek?id=sd-1", "sd-1"},
		{"systemd-credential:///keybroker-kek?id=sd-2", "sd-2"},
		{"docker-secret://keybroker_kek?id=docker-1", "docker-1"},
	}
	for _, tc := range cases {
		t.Run(tc.uri, func(t *testing.T) {
			kek, err := opener.Open(t.Context(), tc.uri)
			require.NoError(t, err)
			roundTrip(t, kek, tc.id, true)
		})
	}
}

func TestOpenRefusals(t *testing.T) {
	t.Parallel()
	opener := kekproviders.Opener{Getenv: mapEnv(map[string]string{"OTHER_KEK": newKeyText()})}
	cases := map[string]struct{ uri, want string }{
		"NoID":              {"env://OTHER_KEK", "add ?id="},
		"BadID":             {"env://OTHER_KEK?id=has space", "KEK id"},
		"NoScheme":          {"OTHER_KEK", "no scheme"},
		"UnknownScheme":     {"s3://bucket/kek?id=a", `unknown scheme "s3"`},
		"UnknownParam":      {"env://OTHER_KEK?id=a&timout=5s", "timout"},
		"FileWithoutPath":   {"file://?id=a", "absolute path"},
		"SystemdNotRunning": {"systemd-credential://kek?id=a", "CREDENTIALS_DIRECTORY is not set"},
		"DockerPathEscape":  {"docker-secret:///../etc/shadow?id=a", "must not contain"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := opener.Open(t.Context(), tc.uri)
			require.ErrorContains(t, err, tc.want)
		})
	}
}

func TestErrorsDoNotEchoQueryValues(t *testing.T) {
	t.Parallel()
	_, err := kekproviders.Opener{Getenv: mapEnv(nil)}.Open(t.Context(), "env://X?token=s3cr3t")
	require.Error(t, err)
	require.NotContains(t, err.Error(), "s3cr3t")
}

func TestParseURICacheOption(t *testing.T) {
	for uri, want := range map[string]bool{
		"awskms:///alias/kb?id=a":                                      true,
		"awskms:///alias/kb?id=a&cache=on":                             true,
		"awskms:///alias/kb?id=a&cache=off":                            false,
		"vault-transit://kb?id=a&cache=off":                            false,
		"gcpkms://projects/p/locations/l/keyRings/r/cryptoKeys/k?id=g": true,
		"env://MANA_AUTH_KEK":                                          false,
	} {
		p, err := kekproviders.ParseURI(uri)
		if err != nil {
			t.Fatalf("%s: %v", uri, err)
		}
		if p.Cached != want {
			t.Errorf("%s: Cached = %v, want %v", uri, p.Cached, want)
		}
		if p.URL.Query().Has("cache") {
			t.Errorf("%s: the cache option must not reach the provider", uri)
		}
	}
	for _, bad := range []string{"awskms:///alias/kb?id=a&cache=maybe", "env://MANA_AUTH_KEK?cache=off"} {
		if _, err := kekproviders.ParseURI(bad); err == nil {
			t.Errorf("%s: want an error", bad)
		}
	}
}

// TestOpenRefusesLooseKEKFiles is the attack of a local user on a KEK
// file: one that group or others may read (and so copy) or write (and so
// swap) is refused with the chmod that fixes it, also behind a symbolic
// link; owner-only files open. systemd credentials and Docker secrets keep
// the modes their managers set.
func TestOpenRefusesLooseKEKFiles(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	write := func(name string, mode os.FileMode) string {
		path := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(path, []byte(newKeyText()), 0o600))
		require.NoError(t, os.Chmod(path, mode)) // whatever the umask
		return path
	}
	for name, mode := range map[string]os.FileMode{
		"WorldReadable": 0o644,
		"GroupReadable": 0o640,
		"GroupWritable": 0o620,
		"OtherWritable": 0o602,
		"Everything":    0o777,
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			path := write(name, mode)
			_, err := kekproviders.Open(t.Context(), "file://"+path+"?id=file-1")
			require.Error(t, err)
			var modeErr *file.ModeError
			require.ErrorAs(t, err, &modeErr)
			require.Equal(t, mode, modeErr.Mode)
			require.ErrorContains(t, err, "chmod 600 "+path)
		})
	}
	t.Run("LinkToLooseFile", func(t *testing.T) {
		t.Parallel()
		target := write("loose-target", 0o644)
		link := filepath.Join(dir, "loose-link")
		require.NoError(t, os.Symlink(target, link))
		_, err := kekproviders.Open(t.Context(), "file://"+link+"?id=file-1")
		require.ErrorContains(t, err, "chmod 600 "+link)
		require.ErrorContains(t, err, "a link to "+target)
	})
	for name, mode := range map[string]os.FileMode{"OwnerReadWrite": 0o600, "OwnerReadOnly": 0o400} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			path := write(name, mode)
			kek, err := kekproviders.Open(t.Context(), "file://"+path+"?id=file-1")
			require.NoError(t, err)
			roundTrip(t, kek, "file-1", true)
		})
	}
	t.Run("LinkToOwnerOnlyFile", func(t *testing.T) {
		t.Parallel()
		target := write("tight-target", 0o400)
		link := filepath.Join(dir, "tight-link") // a link's own mode is 0777 and means nothing
		require.NoError(t, os.Symlink(target, link))
		kek, err := kekproviders.Open(t.Context(), "file://"+link+"?id=file-1")
		require.NoError(t, err)
		roundTrip(t, kek, "file-1", true)
	})
	t.Run("ManagedSecretsKeepTheirModes", func(t *testing.T) {
		t.Parallel()
		credDir, secretsDir := filepath.Join(dir, "credentials"), filepath.Join(dir, "secrets")
		require.NoError(t, os.Mkdir(credDir, 0o700))
		require.NoError(t, os.Mkdir(secretsDir, 0o700))
		for _, path := range []string{filepath.Join(credDir, "kek"), filepath.Join(secretsDir, "kek")} {
			require.NoError(t, os.WriteFile(path, []byte(newKeyText()), 0o444)) // Swarm's default
		}
		opener := kekproviders.Opener{Getenv: mapEnv(map[string]string{"CREDENTIALS_DIRECTORY": credDir}), DockerSecretsDir: secretsDir}
		for _, uri := range []string{"systemd-credential://kek?id=sd-1", "docker-secret://kek?id=docker-1"} {
			_, err := opener.Open(t.Context(), uri)
			require.NoError(t, err, uri)
		}
	})
}

// TestMisspeltParameterIsNamed: a misspelt parameter is named with the
// one it most likely misspells, and the URI is echoed with its query —
// values that may be secrets redacted, names and paths shown.
func TestMisspeltParameterIsNamed(t *testing.T) {
	t.Parallel()
	opener := kekproviders.Opener{Getenv: mapEnv(map[string]string{"OTHER_KEK": newKeyText()})}
	for name, c := range map[string]struct{ uri, says, hidden string }{
		"MisspeltID":      {"file:///etc/keybroker/kek?idd=kek-2026", "unknown parameter idd (did you mean id?) in file:///etc/keybroker/kek?idd=kek-2026", ""},
		"MisspeltTimeout": {"env://OTHER_KEK?id=a&timout=5s", "unknown parameter timout in env://OTHER_KEK?id=a&timout=5s", ""},
		"AWSRegion":       {"awskms:///alias/kb?id=a&regoin=eu-central-1", "unknown parameter regoin (did you mean region?) in awskms:///alias/kb?id=a&regoin=eu-central-1", ""},
		"TokenInURI":      {"vault-transit://kb?id=a&token=hvs.s3cr3t&address=https://vault.test", "unknown parameter token in vault-transit://kb?id=a&token=REDACTED&address=https://vault.test", "s3cr3t"},
		"PINMisspelt":     {"pkcs11:token=t;object=k?id=a&module-path=/m.so&pin_value=1234", "pin_value", "1234"},
		"Password":        {"vault-transit://user:s3cr3t@kb?idd=a", "unknown parameter idd (did you mean id?) in vault-transit://user:REDACTED@kb?idd=a", "s3cr3t"},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			_, err := opener.Open(t.Context(), c.uri)
			require.ErrorContains(t, err, c.says)
			if c.hidden != "" {
				require.NotContains(t, err.Error(), c.hidden)
			}
		})
	}
}
