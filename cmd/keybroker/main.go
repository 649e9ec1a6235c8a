// Command keybroker is the key broker's server and operator CLI. It is
// the only place that reads flags and the environment; everything else is
// configured through typed structs.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/cmd/keybroker/internal/config"
)

// version and commit are set at build time by `make build` and `make
// release` (-ldflags "-X main.version=… -X main.commit=…"); see
// internal/cmd/release for how the version is named. A plain go build or
// go install fills in what it can from the build information (main).
var (
	version = "dev"
	commit  = ""
)

// resolveVersion fills in what -ldflags did not set from the build
// information Go records: `go install …/cmd/keybroker@v1.2.3` knows its
// module version, a build in a git checkout its revision.
func resolveVersion(version, commit string, info *debug.BuildInfo, ok bool) (string, string) {
	if !ok {
		return version, commit
	}
	if version == "dev" && info.Main.Version != "" && info.Main.Version != "(devel)" {
		version = info.Main.Version
	}
	if commit != "" {
		return version, commit
	}
	var modified bool
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			commit = s.Value
		case "vcs.modified":
			modified = s.Value == "true"
		}
	}
	if commit != "" && modified {
		commit += "+dirty"
	}
	return version, commit
}

// printVersion is `keybroker version`: the version on the first line (as
// before), then the commit when known and the Go release and platform.
func printVersion(w io.Writer) {
	fmt.Fprintln(w, "keybroker", version)
	if commit != "" {
		fmt.Fprintln(w, "commit", commit)
	}
	fmt.Fprintln(w, runtime.Version(), runtime.GOOS+"/"+runtime.GOARCH)
}

func main() {
	info, ok := debug.ReadBuildInfo()
	version, commit = resolveVersion(version, commit, info, ok)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr, nil); err != nil {
		if !errors.Is(err, errUsage) {
			fmt.Fprintln(os.Stderr, "keybroker:", err)
		}
		os.Exit(1)
	}
}

// hooks lets tests observe the server; nil in production.
type hooks struct {
	listening func(addr string)
	// rewrapRun is called after each run of the background re-wrap job.
	rewrapRun func(res *broker.RewrapResult, err error)
	// now, when set, is the clock of the data keys' maximum age and of
	// the re-wrap job (its data-key grace period).
	now func() time.Time
}

// clock is h.now, or time.Now without hooks.
func (h *hooks) clock() func() time.Time {
	if h == nil || h.now == nil {
		return time.Now
	}
	return h.now
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer, h *hooks) error {
	err := dispatch(ctx, root, nil, args, &cli{getenv: getenv, stdout: stdout, stderr: stderr, hooks: h})
	var help *config.HelpError
	if errors.As(err, &help) {
		// -h and --help print the help on stdout and succeed.
		fmt.Fprint(stdout, help.Text)
		return nil
	}
	return err
}
