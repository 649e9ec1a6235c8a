package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"debug/buildinfo"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"runtime/debug"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// moduleRoot is the repository root, three levels above this package.
func moduleRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs(filepath.Join("..", "..", ".."))
	require.NoError(t, err)
	require.FileExists(t, filepath.Join(root, "go.mod"))
	return root
}

func goTool(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath("go")
	require.NoError(t, err, "the go command on PATH builds the release")
	return path
}

// copySource copies the module at root into dst: what a second person
// checking out the same commit in another directory would have.
func copySource(t *testing.T, root, dst string) {
	t.Helper()
	skip := map[string]bool{".git": true, "bin": true, "dist": true, ".keybroker": true}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, path)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		switch {
		case d.IsDir() && skip[d.Name()] && rel != ".":
			return filepath.SkipDir
		case d.IsDir():
			return os.MkdirAll(target, 0o755)
		case !d.Type().IsRegular():
			return nil
		}
		raw, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(target, raw, 0o644)
	})
	require.NoError(t, err)
}

// TestReleaseBuild builds keybroker for linux/amd64 twice, from two
// copies of the source in directories of different depth, once with
// buildBinary and once through dist, and requires the same bytes: a
// release can be rebuilt and checked against SHA256SUMS by anyone. It
// stays cheap by reusing the Go build cache (deploy's tests compile the
// same packages with the same flags), so each build is mostly a link —
// which is where paths, build ids and stamps would get in.
func TestReleaseBuild(t *testing.T) {
	root := moduleRoot(t)
	goCmd := goTool(t)
	ctx := context.Background()
	linux := Platform{"linux", "amd64"}
	src := Source{
		// "+dirty" puts a character in the version that purls escape.
		Version: "v0.3.1-0.20260102030405-0123456789ab+dirty",
		Commit:  "0123456789abcdef0123456789abcdef01234567",
		Time:    time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
	}

	tmp := t.TempDir()
	srcA := filepath.Join(tmp, "a")
	srcB := filepath.Join(tmp, "checkout", "of", "the", "same", "commit")
	copySource(t, root, srcA)
	copySource(t, root, srcB)

	binA := filepath.Join(tmp, "outA", "keybroker")
	require.NoError(t, buildBinary(ctx, goCmd, srcA, linux, src, binA))

	outB := filepath.Join(tmp, "outB")
	require.NoError(t, os.MkdirAll(outB, 0o755))
	stale := filepath.Join(outB, "keybroker_v0.0.1_linux_amd64")
	require.NoError(t, os.WriteFile(stale, []byte("an older release"), 0o755))
	files, err := dist(ctx, distConfig{
		GoTool: goCmd, SrcDir: srcB, OutDir: outB,
		Platforms: []Platform{linux}, Source: src, Epoch: src.Time, Log: io.Discard,
	})
	require.NoError(t, err)
	name := "keybroker_v0.3.1-0.20260102030405-0123456789ab+dirty_linux_amd64"
	require.Equal(t, []string{name, name + ".cdx.json", "SHA256SUMS"}, files)
	binB := filepath.Join(outB, name)

	t.Run("ByteIdentical", func(t *testing.T) {
		require.NoError(t, sameBytes(binA, binB))
	})

	t.Run("NoBuildPathInTheBinary", func(t *testing.T) {
		raw, err := os.ReadFile(binB)
		require.NoError(t, err)
		require.False(t, bytes.Contains(raw, []byte(srcB)), "the checkout's path is in the binary")
		require.False(t, bytes.Contains(raw, []byte(tmp)), "the build's temporary path is in the binary")
	})

	t.Run("StaticAndAsBuilt", func(t *testing.T) {
		require.NoError(t, verifyBinary(binB, linux))
		require.Error(t, verifyBinary(binB, Platform{"linux", "arm64"}), "verifyBinary checks the platform")
	})

	t.Run("VersionStamped", func(t *testing.T) {
		if runtime.GOOS != linux.OS || runtime.GOARCH != linux.Arch {
			t.Skipf("a %s binary does not run on %s/%s", linux, runtime.GOOS, runtime.GOARCH)
		}
		out, err := exec.Command(binB, "version").CombinedOutput()
		require.NoError(t, err, "%s", out)
		lines := strings.Split(strings.TrimSpace(string(out)), "\n")
		require.Len(t, lines, 3, "%s", out)
		require.Equal(t, "keybroker "+src.Version, lines[0])
		require.Equal(t, "commit "+src.Commit, lines[1])
		require.Regexp(t, `^go1\.[0-9]+.* linux/amd64$`, lines[2])
	})

	t.Run("Dist", func(t *testing.T) {
		require.NoFileExists(t, stale, "artifacts of another release are removed")
		sums, err := os.ReadFile(filepath.Join(outB, "SHA256SUMS"))
		require.NoError(t, err)
		var want strings.Builder
		for _, f := range []string{name, name + ".cdx.json"} { // sorted by name
			raw, err := os.ReadFile(filepath.Join(outB, f))
			require.NoError(t, err)
			sum := sha256.Sum256(raw)
			want.WriteString(hex.EncodeToString(sum[:]) + "  " + f + "\n")
		}
		require.Equal(t, want.String(), string(sums))
		for _, f := range files {
			fi, err := os.Stat(filepath.Join(outB, f))
			require.NoError(t, err)
			require.True(t, fi.ModTime().Equal(src.Time), "%s: modification time %s, want the commit time", f, fi.ModTime())
		}
		fi, err := os.Stat(binB)
		require.NoError(t, err)
		require.Equal(t, fs.FileMode(0o755), fi.Mode().Perm())
		if sha256sum, err := exec.LookPath("sha256sum"); err == nil {
			cmd := exec.Command(sha256sum, "-c", "SHA256SUMS")
			cmd.Dir = outB
			out, err := cmd.CombinedOutput()
			require.NoError(t, err, "sha256sum -c: %s", out)
		}
	})

	t.Run("SBOM", func(t *testing.T) {
		testSBOM(t, root, goCmd, binB, filepath.Join(outB, name+".cdx.json"), src)
	})
}

// testSBOM checks the SBOM dist wrote for bin against the binary itself,
// against go.sum and against the go command's own list of the modules
// cmd/keybroker is built from.
func testSBOM(t *testing.T, root, goCmd, bin, bomPath string, src Source) {
	raw, err := os.ReadFile(bomPath)
	require.NoError(t, err)
	var bom cdxBOM
	require.NoError(t, json.Unmarshal(raw, &bom))

	again, err := sbom(bin, src.Version, src.Time)
	require.NoError(t, err)
	require.Equal(t, string(raw), string(again), "the same binary gives the same SBOM")
	require.Contains(t, string(raw), `?goarch=amd64&goos=linux"`, "no HTML escaping in purls")

	binRaw, err := os.ReadFile(bin)
	require.NoError(t, err)
	digest := sha256.Sum256(binRaw)
	require.Equal(t, "CycloneDX", bom.BOMFormat)
	require.Equal(t, "1.5", bom.SpecVersion)
	require.Regexp(t, `^urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`, bom.SerialNumber)
	require.Equal(t, "2026-01-02T03:04:05Z", bom.Metadata.Timestamp)
	app := bom.Metadata.Component
	require.Equal(t, "keybroker", app.Name)
	require.Equal(t, src.Version, app.Version)
	require.Equal(t, []cdxHash{{Alg: "SHA-256", Content: hex.EncodeToString(digest[:])}}, app.Hashes)
	require.Equal(t, "pkg:golang/github.com/keybroker/keybroker@v0.3.1-0.20260102030405-0123456789ab%2Bdirty?goarch=amd64&goos=linux", app.PURL)
	require.Equal(t, projectLicense, app.Licenses[0].License.ID)
	require.Contains(t, app.Properties, cdxProperty{"cdx:gomod:build:env:CGO_ENABLED", "0"})

	// Every module linked into the binary (what `go version -m` lists),
	// with its version and its go.sum hash.
	info, err := buildinfo.ReadFile(bin)
	require.NoError(t, err)
	goSum := readGoSum(t, filepath.Join(root, "go.sum"))
	byName := map[string]cdxComponent{}
	for _, c := range bom.Components {
		require.NotContains(t, byName, c.Name, "one component per module")
		byName[c.Name] = c
	}
	goVersion, _, _ := strings.Cut(info.GoVersion, " ")
	require.Equal(t, goVersion, byName["stdlib"].Version)
	require.Len(t, bom.Components, len(info.Deps)+1, "the standard library and every module")
	for _, dep := range info.Deps {
		c, ok := byName[dep.Path]
		require.True(t, ok, "%s is not in the SBOM", dep.Path)
		require.Equal(t, dep.Version, c.Version, dep.Path)
		require.Equal(t, "pkg:golang/"+dep.Path+"@"+dep.Version, c.PURL)
		require.Contains(t, goSum, dep.Path+" "+dep.Version+" "+dep.Sum, "%s: the hash is go.sum's", dep.Path)
		h1, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(dep.Sum, "h1:"))
		require.NoError(t, err)
		require.Equal(t, []cdxHash{{Alg: "SHA-256", Content: hex.EncodeToString(h1)}}, c.Hashes, dep.Path)
		require.Contains(t, c.Properties, cdxProperty{goSumProperty, dep.Sum})
	}

	// The same set, asked of the go command's package graph rather than
	// of the binary: no module the build uses is missing.
	list := exec.Command(goCmd, "list", "-deps", "-f", "{{with .Module}}{{if not .Main}}{{.Path}} {{.Version}}{{end}}{{end}}", mainPackage)
	list.Dir = root
	list.Env = buildEnv(os.Environ(), Platform{"linux", "amd64"})
	out, err := list.Output()
	require.NoError(t, err)
	want := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if line != "" {
			want[line] = true
		}
	}
	got := map[string]bool{}
	for _, c := range bom.Components {
		if c.Name != "stdlib" {
			got[c.Name+" "+c.Version] = true
		}
	}
	require.Equal(t, want, got)
}

// readGoSum is the set of "path version hash" lines of a go.sum.
func readGoSum(t *testing.T, path string) map[string]bool {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	lines := map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		lines[strings.TrimSpace(sc.Text())] = true
	}
	require.NoError(t, sc.Err())
	return lines
}

func TestSBOMRefusesAModuleWithoutGoSumHash(t *testing.T) {
	t.Parallel()
	_, err := moduleComponent(&debug.Module{Path: "example.com/local", Version: "v0.0.0"})
	require.ErrorContains(t, err, "example.com/local@v0.0.0 has no go.sum hash")
	c, err := moduleComponent(&debug.Module{
		Path: "example.com/upstream", Version: "v1.0.0",
		Replace: &debug.Module{Path: "example.com/fork", Version: "v1.0.1", Sum: "h1:" + base64.StdEncoding.EncodeToString(make([]byte, 32))},
	})
	require.NoError(t, err)
	require.Equal(t, "example.com/fork", c.Name, "a replaced module is described by what was linked")
	require.Contains(t, c.Properties, cdxProperty{"keybroker:gomod:replaces", "example.com/upstream@v1.0.0"})
}

func TestVerifyStaticELFRefusesADynamicExecutable(t *testing.T) {
	t.Parallel()
	for _, path := range []string{"/bin/sh", "/usr/bin/env"} {
		if _, err := os.Stat(path); err != nil {
			continue
		}
		err := verifyStaticELF(path)
		if err == nil {
			continue // a statically linked shell (busybox): not the case this test needs
		}
		require.ErrorContains(t, err, "not a static executable")
		return
	}
	t.Skip("no dynamically linked executable on this machine to check against")
}

// gitRepo is a fresh repository with fixed identities and dates.
type gitRepo struct {
	t   *testing.T
	dir string
	now time.Time
}

func newGitRepo(t *testing.T) *gitRepo {
	_, err := exec.LookPath("git")
	require.NoError(t, err, "git names the version of a release")
	r := &gitRepo{t: t, dir: t.TempDir(), now: time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)}
	r.git("init", "-q")
	return r
}

func (r *gitRepo) git(args ...string) string {
	r.t.Helper()
	cmd := exec.Command("git", args...)
	cmd.Dir = r.dir
	date := r.now.Format(time.RFC3339)
	cmd.Env = append(os.Environ(),
		"GIT_CONFIG_GLOBAL=/dev/null", "GIT_CONFIG_NOSYSTEM=1",
		"GIT_AUTHOR_NAME=t", "GIT_AUTHOR_EMAIL=t@example.com", "GIT_AUTHOR_DATE="+date,
		"GIT_COMMITTER_NAME=t", "GIT_COMMITTER_EMAIL=t@example.com", "GIT_COMMITTER_DATE="+date)
	out, err := cmd.CombinedOutput()
	require.NoError(r.t, err, "git %v: %s", args, out)
	return strings.TrimSpace(string(out))
}

// commit makes a commit an hour after the last and returns its id.
func (r *gitRepo) commit() string {
	r.now = r.now.Add(time.Hour)
	require.NoError(r.t, os.WriteFile(filepath.Join(r.dir, "file"), []byte(r.now.String()), 0o644))
	r.git("add", "file")
	r.git("commit", "-q", "-m", "change")
	return r.git("rev-parse", "HEAD")
}

func (r *gitRepo) describe() Source {
	r.t.Helper()
	src, err := describe(context.Background(), r.dir)
	require.NoError(r.t, err)
	return src
}

func TestVersionFromGit(t *testing.T) {
	t.Parallel()
	r := newGitRepo(t)

	t.Run("NoTagIsAPseudoVersion", func(t *testing.T) {
		c := r.commit()
		src := r.describe()
		require.Equal(t, "v0.0.0-20260304060607-"+c[:12], src.Version)
		require.Equal(t, c, src.Commit)
		require.Equal(t, time.Date(2026, 3, 4, 6, 6, 7, 0, time.UTC), src.Time)
		require.False(t, src.Dirty)
	})

	t.Run("UncommittedChangesAreDirty", func(t *testing.T) {
		require.NoError(t, os.WriteFile(filepath.Join(r.dir, "new"), []byte("x"), 0o644))
		src := r.describe()
		require.True(t, src.Dirty)
		require.True(t, strings.HasSuffix(src.Version, "+dirty"), src.Version)
		require.NoError(t, os.Remove(filepath.Join(r.dir, "new")))
		require.False(t, r.describe().Dirty)
	})

	t.Run("TagAtTheCommit", func(t *testing.T) {
		r.git("tag", "v0.9.0")
		r.git("tag", "v0.10.0-rc.1")
		r.git("tag", "v0.10.0")
		r.git("tag", "release-2026")  // not a version: ignored
		r.git("tag", "v1")            // not a full semantic version: ignored
		r.git("tag", "v0.10.0+build") // build metadata: not a Go module version
		require.Equal(t, "v0.10.0", r.describe().Version, "the highest version, not the newest or the last in ASCII order")
	})

	t.Run("AfterATag", func(t *testing.T) {
		c := r.commit()
		require.Equal(t, "v0.10.1-0.20260304070607-"+c[:12], r.describe().Version)
	})

	t.Run("AfterAPrerelease", func(t *testing.T) {
		r.git("tag", "-a", "-m", "annotated", "v0.11.0-rc.2")
		require.Equal(t, "v0.11.0-rc.2", r.describe().Version, "annotated tags count too")
		c := r.commit()
		require.Equal(t, "v0.11.0-rc.2.0.20260304080607-"+c[:12], r.describe().Version)
	})
}

func TestDescribeOutsideACheckoutFails(t *testing.T) {
	t.Parallel()
	_, err := describe(context.Background(), t.TempDir())
	require.Error(t, err)
}

func TestSemverPrecedence(t *testing.T) {
	t.Parallel()
	// The order of https://semver.org/#spec-item-11, and numbers compared
	// as numbers.
	ordered := []string{
		"v1.0.0-alpha", "v1.0.0-alpha.1", "v1.0.0-alpha.beta", "v1.0.0-beta", "v1.0.0-beta.2",
		"v1.0.0-beta.11", "v1.0.0-rc.1", "v1.0.0", "v1.2.0", "v1.10.0", "v2.0.0",
	}
	for i := range ordered {
		for j := range ordered {
			a, ok := parseSemver(ordered[i])
			require.True(t, ok, ordered[i])
			b, _ := parseSemver(ordered[j])
			want := 0
			switch {
			case i < j:
				want = -1
			case i > j:
				want = 1
			}
			require.Equal(t, want, a.compare(b), "%s vs %s", ordered[i], ordered[j])
		}
	}
	shuffled := append([]string{"junk"}, ordered...)
	sort.Sort(sort.Reverse(sort.StringSlice(shuffled)))
	require.Equal(t, "v2.0.0", highestSemver(shuffled))
	for _, bad := range []string{"1.0.0", "v1.0", "v01.0.0", "v1.0.0-", "v1.0.0-01", "v1.0.0+meta", "v1.0.0-a..b"} {
		_, ok := parseSemver(bad)
		require.False(t, ok, bad)
	}
}

// TestFlagsAgreeEverywhere: `make build` and the container image link
// with the release's flags, so each of them gives the release's bytes
// for its platform.
func TestFlagsAgreeEverywhere(t *testing.T) {
	t.Parallel()
	root := moduleRoot(t)
	makefile, err := os.ReadFile(filepath.Join(root, "Makefile"))
	require.NoError(t, err)
	require.Regexp(t, regexp.MustCompile(`(?m)^LDFLAGS\s*=\s*`+regexp.QuoteMeta(ldflags("$(VERSION)", "$(COMMIT)"))+`$`), string(makefile))
	require.Regexp(t, regexp.MustCompile(`(?m)^\tCGO_ENABLED=0 \$\(GO\) build -trimpath -buildvcs=false -ldflags "\$\(LDFLAGS\)" `), string(makefile))
	require.Regexp(t, regexp.MustCompile(`(?m)^release:\n\t\$\(GO\) run ./internal/cmd/release dist `), string(makefile))

	dockerfile, err := os.ReadFile(filepath.Join(root, "Dockerfile"))
	require.NoError(t, err)
	d := strings.Join(strings.Fields(strings.ReplaceAll(string(dockerfile), "\\\n", " ")), " ")
	require.Contains(t, d, `CGO_ENABLED=0 GOOS=${TARGETOS} GOARCH=${TARGETARCH} GOAMD64=v1 GOARM64=v8.0 go build -trimpath -buildvcs=false -mod=readonly -ldflags "`+ldflags("${VERSION}", "${COMMIT}")+`" -o /out/keybroker `+mainPackage)

	require.Equal(t, []string{"build", "-trimpath", "-buildvcs=false", "-mod=readonly", "-ldflags", ldflags("v", "c"), "-o", "out", mainPackage},
		buildArgs(Source{Version: "v", Commit: "c"}, "out"), "the Dockerfile's go build (above) spells out these arguments")
}

func TestBuildEnvPinsWhatChangesTheOutput(t *testing.T) {
	t.Parallel()
	env := buildEnv([]string{"HOME=/h", "GOFLAGS=-race -tags=x", "CGO_ENABLED=1", "GOAMD64=v3", "GOOS=windows", "GOCACHE=/c"}, Platform{"darwin", "arm64"})
	got := map[string]string{}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		require.NotContains(t, got, k, "%s set twice", k)
		got[k] = v
	}
	require.Equal(t, map[string]string{
		"HOME": "/h", "GOCACHE": "/c",
		"CGO_ENABLED": "0", "GOOS": "darwin", "GOARCH": "arm64", "GOAMD64": "v1", "GOARM64": "v8.0",
		"GOFLAGS": "-mod=readonly", "GOEXPERIMENT": "",
	}, got)
}

func TestSourceDateEpoch(t *testing.T) {
	t.Parallel()
	src := Source{Time: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	got, err := sourceDateEpoch(src, "")
	require.NoError(t, err)
	require.Equal(t, src.Time, got)
	got, err = sourceDateEpoch(src, "1700000000")
	require.NoError(t, err)
	require.Equal(t, time.Unix(1700000000, 0).UTC(), got)
	_, err = sourceDateEpoch(src, "yesterday")
	require.Error(t, err)
}
