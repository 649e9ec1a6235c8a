package deploy

import (
	"encoding/base64"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
)

// binDir holds the keybroker binary built for these tests, removed by
// TestMain.
var binDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "keybroker-deploy-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

var (
	buildOnce sync.Once
	builtBin  string
	buildErr  error
)

// keybrokerBinary builds ./cmd/keybroker once per test run, as the
// Dockerfile does (static, no cgo).
func keybrokerBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		goTool, err := exec.LookPath("go")
		if err != nil {
			buildErr = fmt.Errorf("no go tool on PATH: %w", err)
			return
		}
		bin := filepath.Join(binDir, "keybroker")
		cmd := exec.Command(goTool, "build", "-trimpath", "-o", bin, "../cmd/keybroker")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %w\n%s", err, out)
			return
		}
		builtBin = bin
	})
	require.NoError(t, buildErr)
	return builtBin
}

// looksLikeKey reports whether v is key material: 32 bytes, raw or in
// base64 of any alphabet — what a KEK pasted into a config file would be.
func looksLikeKey(v string) bool {
	v = strings.TrimSpace(v)
	if len(v) == 32 && !strings.Contains(v, "://") {
		return true
	}
	for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
		if b, err := enc.DecodeString(v); err == nil && len(b) == 32 {
			return true
		}
	}
	return false
}

// noPassword fails the test when a database URL carries a password: it
// belongs in a secret file (passfile=) or a credential.
func noPassword(t *testing.T, databaseURL string) {
	t.Helper()
	u, err := url.Parse(databaseURL)
	require.NoError(t, err)
	_, has := u.User.Password()
	require.False(t, has, "a password in DATABASE_URL")
	require.Empty(t, u.Query().Get("password"), "a password in DATABASE_URL")
}

func TestLooksLikeKey(t *testing.T) {
	key := make([]byte, 32)
	require.True(t, looksLikeKey(base64.StdEncoding.EncodeToString(key)))
	require.True(t, looksLikeKey(base64.RawURLEncoding.EncodeToString(key)+"\n"))
	require.False(t, looksLikeKey("docker-secret://keybroker_kek?id=kek-2026"))
	require.False(t, looksLikeKey("https://auth.example.com/api/auth/jwks"))
}
