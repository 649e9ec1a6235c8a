package main

import (
	"bytes"
	"context"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestDemoWalksTheWholeStory builds keybroker and runs the demo as
// `make demo` does.
func TestDemoWalksTheWholeStory(t *testing.T) {
	binary := filepath.Join(t.TempDir(), "keybroker")
	build := exec.Command("go", "build", "-o", binary, "github.com/keybroker/keybroker/cmd/keybroker")
	out, err := build.CombinedOutput()
	require.NoError(t, err, "%s", out)

	var stdout bytes.Buffer
	require.NoError(t, run(context.Background(), binary, &stdout), stdout.String())
	for _, want := range []string{"1. POST /init", "3. POST /recovery-wrap", "5. GET /key", "requiresRecoveryCode=true",
		"6. unlock", "a wrong code is refused", "8. POST /rotate", "9. GET /status", "the whole story worked"} {
		require.Contains(t, stdout.String(), want)
	}
	require.Regexp(t, `([0-9A-F]{4}-){15}[0-9A-F]{4}`, stdout.String(), "the recovery code is shown")
}
