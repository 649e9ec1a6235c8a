package main

import (
	"bytes"
	"context"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestVersionCommandPrintsVersionCommitAndGo(t *testing.T) {
	t.Parallel()
	var out, errOut bytes.Buffer
	require.NoError(t, run(context.Background(), []string{"version"}, envFunc(nil), &out, &errOut, nil))
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	require.Equal(t, "keybroker "+version, lines[0], "the first line stays `keybroker <version>`")
	require.Equal(t, runtime.Version()+" "+runtime.GOOS+"/"+runtime.GOARCH, lines[len(lines)-1])
}

func TestResolveVersion(t *testing.T) {
	t.Parallel()
	installed := &debug.BuildInfo{Main: debug.Module{Path: "github.com/keybroker/keybroker", Version: "v1.2.3"}}
	v, c := resolveVersion("dev", "", installed, true)
	require.Equal(t, "v1.2.3", v, "go install …@v1.2.3 reports v1.2.3")
	require.Empty(t, c)

	v, c = resolveVersion("v9.9.9", "abc", installed, true)
	require.Equal(t, "v9.9.9", v, "-ldflags wins over the build information")
	require.Equal(t, "abc", c)

	checkout := &debug.BuildInfo{
		Main: debug.Module{Path: "github.com/keybroker/keybroker", Version: "(devel)"},
		Settings: []debug.BuildSetting{
			{Key: "vcs.revision", Value: "0123456789abcdef0123456789abcdef01234567"},
			{Key: "vcs.modified", Value: "true"},
		},
	}
	v, c = resolveVersion("dev", "", checkout, true)
	require.Equal(t, "dev", v, "(devel) says nothing")
	require.Equal(t, "0123456789abcdef0123456789abcdef01234567+dirty", c)

	v, c = resolveVersion("dev", "", nil, false)
	require.Equal(t, "dev", v)
	require.Empty(t, c)
}
