// Command release builds keybroker's release artifacts. It is `make
// release` and the source of the version `make build` stamps.
//
//	go run ./internal/cmd/release version
//	go run ./internal/cmd/release dist [-out dist] [-go go] [-allow-dirty]
//
// version prints the version of the checkout (see describe). dist builds
// reproducible static binaries for linux and darwin on amd64 and arm64,
// one CycloneDX SBOM per binary and SHA256SUMS over all of them:
//
//	dist/keybroker_<version>_<os>_<arch>
//	dist/keybroker_<version>_<os>_<arch>.cdx.json
//	dist/SHA256SUMS
//
// The same commit built with the same Go release gives the same bytes on
// any machine, in any directory: the binaries carry no path, build id,
// time or host detail, the SBOMs are dated with the commit, and every
// file's modification time is the commit time (or $SOURCE_DATE_EPOCH).
// Anyone can rebuild a release and compare it with SHA256SUMS.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "release:", err)
		os.Exit(1)
	}
}

const usage = `usage: release version | release dist [-out DIR] [-go GO] [-allow-dirty]`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return errors.New(usage)
	}
	switch args[0] {
	case "version":
		src, err := describe(ctx, ".")
		if err != nil {
			return err
		}
		fmt.Fprintln(stdout, src.Version)
		return nil
	case "dist":
		fs := flag.NewFlagSet("dist", flag.ContinueOnError)
		fs.SetOutput(stderr)
		out := fs.String("out", "dist", "directory to write the artifacts to")
		goTool := fs.String("go", "go", "the go command")
		allowDirty := fs.Bool("allow-dirty", false, "build from a checkout with uncommitted changes (the version says +dirty)")
		if err := fs.Parse(args[1:]); err != nil {
			return err
		}
		src, err := describe(ctx, ".")
		if err != nil {
			return err
		}
		if src.Dirty && !*allowDirty {
			return fmt.Errorf("the checkout has uncommitted changes (git status): a release is built from a commit; commit or stash them, or pass -allow-dirty (make release ALLOW_DIRTY=1) for a %s build", src.Version)
		}
		epoch, err := sourceDateEpoch(src, os.Getenv("SOURCE_DATE_EPOCH"))
		if err != nil {
			return err
		}
		files, err := dist(ctx, distConfig{
			GoTool: *goTool, SrcDir: ".", OutDir: *out,
			Platforms: releasePlatforms, Source: src, Epoch: epoch, Log: stderr,
		})
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "keybroker %s (commit %s) in %s:\n", src.Version, src.Commit, *out)
		for _, f := range files {
			fmt.Fprintln(stdout, " ", f)
		}
		return nil
	default:
		return fmt.Errorf("unknown command %q\n%s", args[0], usage)
	}
}

// sourceDateEpoch is $SOURCE_DATE_EPOCH when set
// (https://reproducible-builds.org/specs/source-date-epoch/), else the
// commit time.
func sourceDateEpoch(src Source, env string) (time.Time, error) {
	if env == "" {
		return src.Time, nil
	}
	secs, err := strconv.ParseInt(env, 10, 64)
	if err != nil || secs < 0 {
		return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH=%q: want seconds since 1970", env)
	}
	return time.Unix(secs, 0).UTC(), nil
}

type distConfig struct {
	GoTool, SrcDir, OutDir string
	Platforms              []Platform
	Source                 Source
	// Epoch is the SBOMs' timestamp and every file's modification time.
	Epoch time.Time
	Log   io.Writer
}

// dist builds every platform into cfg.OutDir with an SBOM each and
// SHA256SUMS, and returns the file names written. Artifacts of earlier
// releases in OutDir are removed first, so SHA256SUMS lists exactly one
// release.
func dist(ctx context.Context, cfg distConfig) ([]string, error) {
	if err := os.MkdirAll(cfg.OutDir, 0o755); err != nil {
		return nil, err
	}
	old, err := filepath.Glob(filepath.Join(cfg.OutDir, "keybroker_*"))
	if err != nil {
		return nil, err
	}
	for _, f := range append(old, filepath.Join(cfg.OutDir, "SHA256SUMS")) {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			return nil, err
		}
	}
	var files []string
	for _, p := range cfg.Platforms {
		name := fmt.Sprintf("keybroker_%s_%s_%s", cfg.Source.Version, p.OS, p.Arch)
		bin := filepath.Join(cfg.OutDir, name)
		fmt.Fprintf(cfg.Log, "release: building %s\n", name)
		if err := buildBinary(ctx, cfg.GoTool, cfg.SrcDir, p, cfg.Source, bin); err != nil {
			return nil, err
		}
		if err := os.Chmod(bin, 0o755); err != nil {
			return nil, err
		}
		bom, err := sbom(bin, cfg.Source.Version, cfg.Epoch)
		if err != nil {
			return nil, err
		}
		if err := os.WriteFile(bin+".cdx.json", bom, 0o644); err != nil {
			return nil, err
		}
		files = append(files, name, name+".cdx.json")
	}
	sums, err := sha256sums(cfg.OutDir, files)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(cfg.OutDir, "SHA256SUMS"), sums, 0o644); err != nil {
		return nil, err
	}
	files = append(files, "SHA256SUMS")
	for _, f := range files {
		if err := os.Chtimes(filepath.Join(cfg.OutDir, f), cfg.Epoch, cfg.Epoch); err != nil {
			return nil, err
		}
	}
	return files, nil
}

// sha256sums is the content of a SHA256SUMS file for names in dir, in the
// format `sha256sum -c` and `shasum -a 256 -c` read, sorted by name.
func sha256sums(dir string, names []string) ([]byte, error) {
	sorted := append([]string(nil), names...)
	sort.Strings(sorted)
	var b strings.Builder
	for _, name := range sorted {
		raw, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return nil, err
		}
		sum := sha256.Sum256(raw)
		fmt.Fprintf(&b, "%s  %s\n", hex.EncodeToString(sum[:]), name)
	}
	return []byte(b.String()), nil
}
