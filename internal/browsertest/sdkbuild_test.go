package browsertest_test

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// sdkSource is the SDK's package directory in the repository.
func sdkSource() string { return filepath.Join(repoRoot, "sdk", "js") }

// builtSDK returns a directory holding a copy of the SDK's sources and
// its build (dist/), made once per test run with the package's own
// TypeScript (npm ci in sdk/js installs it). The repository's tree is
// left untouched.
func builtSDK(t testing.TB) string {
	t.Helper()
	shared.sdkOnce.Do(func() { shared.sdkDir, shared.sdkMissing, shared.sdkErr = buildSDK() })
	if shared.sdkMissing != "" {
		unavailable(t, shared.sdkMissing)
	}
	require.NoError(t, shared.sdkErr, "building the SDK")
	return shared.sdkDir
}

func buildSDK() (dir, missing string, err error) {
	src := sdkSource()
	if _, err := exec.LookPath("node"); err != nil {
		return "", "node is not installed (Debian: apt-get install nodejs)", nil
	}
	if _, err := os.Stat(filepath.Join(src, "node_modules", "typescript", "bin", "tsc")); err != nil {
		return "", "the SDK's npm packages are not installed: run `npm ci` in sdk/js", nil
	}
	dir, err = os.MkdirTemp("", "keybroker-sdk-")
	if err != nil {
		return "", "", err
	}
	for _, name := range []string{"package.json", "package-lock.json", "tsconfig.json", "tsconfig.test.json", "src", "test"} {
		if err := copyTree(filepath.Join(src, name), filepath.Join(dir, name)); err != nil {
			return dir, "", err
		}
	}
	if err := os.Symlink(filepath.Join(src, "node_modules"), filepath.Join(dir, "node_modules")); err != nil {
		return dir, "", err
	}
	if out, err := runNode(dir, nil, filepath.Join("node_modules", "typescript", "bin", "tsc"), "-p", "tsconfig.json"); err != nil {
		return dir, "", fmt.Errorf("tsc -p tsconfig.json: %w\n%s", err, out)
	}
	return dir, "", nil
}

// runNode runs node with args in dir, bounded in time.
func runNode(dir string, env []string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	return cmd.CombinedOutput()
}

func copyTree(from, to string) error {
	return filepath.WalkDir(from, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(from, path)
		if err != nil {
			return err
		}
		target := filepath.Join(to, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(target, data, 0o644)
	})
}
