package main

import (
	"bytes"
	"context"
	"debug/buildinfo"
	"debug/elf"
	"debug/macho"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// Platform is one target of a release build.
type Platform struct{ OS, Arch string }

func (p Platform) String() string { return p.OS + "/" + p.Arch }

// releasePlatforms are the targets of `make release`: Linux servers and
// containers, and macOS on Intel and Apple silicon (a Mac mini is arm64).
var releasePlatforms = []Platform{
	{"linux", "amd64"}, {"linux", "arm64"},
	{"darwin", "amd64"}, {"darwin", "arm64"},
}

// mainPackage is the package every release binary is built from.
const mainPackage = "./cmd/keybroker"

// ldflags are the linker flags of a release binary: no symbol table or
// DWARF (-s -w), an empty build id (-buildid=: it is a hash of the
// inputs, but of the action ids of this machine's go command too, and
// it would be the one opaque string in the binary), and the version and
// commit `keybroker version` prints. The Makefile's LDFLAGS and the
// Dockerfile's go build use this same string (TestFlagsAgreeEverywhere).
func ldflags(version, commit string) string {
	return "-s -w -buildid= -X main.version=" + version + " -X main.commit=" + commit
}

// buildArgs is the go build command line of a release binary.
func buildArgs(src Source, out string) []string {
	return []string{
		"build",
		"-trimpath",       // no file system path of this machine in the binary
		"-buildvcs=false", // the version comes from ldflags; VCS stamping differs between a clone and a worktree
		"-mod=readonly",   // go.mod and go.sum as committed
		"-ldflags", ldflags(src.Version, src.Commit),
		"-o", out,
		mainPackage,
	}
}

// buildEnv is the environment of a release build: the caller's (for
// GOPATH, GOCACHE, GOPROXY, …) with every variable that changes what the
// compiler and linker produce pinned. GOFLAGS is set rather than unset so
// that a GOFLAGS in the user's go env file (-race, -tags, …) cannot reach
// the build either.
func buildEnv(environ []string, p Platform) []string {
	pinned := map[string]string{
		"CGO_ENABLED":  "0", // static, no C toolchain in the inputs
		"GOOS":         p.OS,
		"GOARCH":       p.Arch,
		"GOAMD64":      "v1",   // runs on every amd64 CPU
		"GOARM64":      "v8.0", // runs on every arm64 CPU
		"GOFLAGS":      "-mod=readonly",
		"GOEXPERIMENT": "",
	}
	env := make([]string, 0, len(environ)+len(pinned))
	for _, kv := range environ {
		key, _, _ := strings.Cut(kv, "=")
		if _, ok := pinned[key]; !ok {
			env = append(env, kv)
		}
	}
	for _, key := range []string{"CGO_ENABLED", "GOOS", "GOARCH", "GOAMD64", "GOARM64", "GOFLAGS", "GOEXPERIMENT"} {
		env = append(env, key+"="+pinned[key])
	}
	return env
}

// buildBinary builds keybroker for p from the module in srcDir into out.
func buildBinary(ctx context.Context, goTool, srcDir string, p Platform, src Source, out string) error {
	cmd := exec.CommandContext(ctx, goTool, buildArgs(src, out)...)
	cmd.Dir = srcDir
	cmd.Env = buildEnv(os.Environ(), p)
	if output, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build for %s: %w\n%s", p, err, output)
	}
	return verifyBinary(out, p)
}

// verifyBinary checks that a built binary is what a release promises:
// built for p by the gc toolchain without cgo, race detector, build tags
// or experiments, with paths trimmed; on Linux a static executable (no
// interpreter, no shared library), on darwin/arm64 ad-hoc signed (macOS
// kills an unsigned arm64 binary at its first instruction).
func verifyBinary(path string, p Platform) error {
	info, err := buildinfo.ReadFile(path)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	want := map[string]string{
		"-buildmode": "exe", "-compiler": "gc", "-trimpath": "true",
		"CGO_ENABLED": "0", "GOOS": p.OS, "GOARCH": p.Arch,
	}
	switch p.Arch {
	case "amd64":
		want["GOAMD64"] = "v1"
	case "arm64":
		want["GOARM64"] = "v8.0"
	}
	got := map[string]string{}
	for _, s := range info.Settings {
		got[s.Key] = s.Value
	}
	for key, value := range want {
		if got[key] != value {
			return fmt.Errorf("%s: build setting %s is %q, want %q", path, key, got[key], value)
		}
	}
	for key, value := range got {
		switch {
		case key == "-tags", key == "-race", key == "-msan", key == "-asan", key == "-cover",
			key == "-gcflags", key == "GOEXPERIMENT", strings.HasPrefix(key, "vcs"):
			return fmt.Errorf("%s: unexpected build setting %s=%s", path, key, value)
		}
	}
	switch p.OS {
	case "linux":
		return verifyStaticELF(path)
	case "darwin":
		return verifyMachO(path, p)
	}
	return nil
}

func verifyStaticELF(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP || prog.Type == elf.PT_DYNAMIC {
			return fmt.Errorf("%s: not a static executable (has %s)", path, prog.Type)
		}
	}
	return nil
}

// lcCodeSignature is LC_CODE_SIGNATURE, which debug/macho does not name.
const lcCodeSignature = 0x1d

func verifyMachO(path string, p Platform) error {
	f, err := macho.Open(path)
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	defer f.Close()
	if p.Arch != "arm64" {
		return nil
	}
	for _, load := range f.Loads {
		raw := load.Raw()
		if len(raw) >= 4 && f.ByteOrder.Uint32(raw) == lcCodeSignature {
			return nil
		}
	}
	return fmt.Errorf("%s: darwin/arm64 binary without a code signature", path)
}

var errNotSame = errors.New("not byte-identical")

// sameBytes reports where two files first differ.
func sameBytes(a, b string) error {
	x, err := os.ReadFile(a)
	if err != nil {
		return err
	}
	y, err := os.ReadFile(b)
	if err != nil {
		return err
	}
	if bytes.Equal(x, y) {
		return nil
	}
	i := 0
	for i < len(x) && i < len(y) && x[i] == y[i] {
		i++
	}
	return fmt.Errorf("%w: %s (%d bytes) and %s (%d bytes) first differ at offset %d", errNotSame, a, len(x), b, len(y), i)
}
