package deploy

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// instruction is one Dockerfile instruction, continuation lines joined.
type instruction struct {
	keyword string // upper case
	args    string
}

// stage is the instructions from one FROM to the next.
type stage struct {
	from, name   string
	platform     string // FROM --platform=…, "" for the target platform
	instructions []instruction
}

func (s stage) all(keyword string) []instruction {
	var out []instruction
	for _, in := range s.instructions {
		if in.keyword == keyword {
			out = append(out, in)
		}
	}
	return out
}

// parseDockerfile splits a Dockerfile into stages. It understands what
// this repository's Dockerfile uses: comments, parser directives,
// backslash continuations, FROM [--platform=…] … AS name.
func parseDockerfile(t *testing.T, path string) []stage {
	t.Helper()
	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	var stages []stage
	var logical strings.Builder
	for _, line := range strings.Split(string(raw), "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "#") || (trimmed == "" && logical.Len() == 0) {
			continue
		}
		if strings.HasSuffix(trimmed, "\\") {
			logical.WriteString(strings.TrimSuffix(trimmed, "\\") + " ")
			continue
		}
		logical.WriteString(trimmed)
		text := logical.String()
		logical.Reset()
		keyword, args, _ := strings.Cut(text, " ")
		in := instruction{keyword: strings.ToUpper(keyword), args: strings.TrimSpace(args)}
		switch {
		case in.keyword == "FROM":
			f := strings.Fields(in.args)
			var s stage
			for len(f) > 0 && strings.HasPrefix(f[0], "--") {
				flag, value, _ := strings.Cut(f[0], "=")
				require.Equal(t, "--platform", flag, "%s: FROM flag %s", path, f[0])
				s.platform = value
				f = f[1:]
			}
			require.NotEmpty(t, f, "%s: FROM without an image", path)
			s.from = f[0]
			if len(f) == 3 && strings.EqualFold(f[1], "AS") {
				s.name = f[2]
			}
			stages = append(stages, s)
		case in.keyword == "ARG" && len(stages) == 0:
			// ARGs before the first FROM parameterise the FROM lines.
		default:
			require.NotEmpty(t, stages, "%s: %s before FROM", path, in.keyword)
			stages[len(stages)-1].instructions = append(stages[len(stages)-1].instructions, in)
		}
	}
	return stages
}

// execForm decodes a JSON-array (exec form) argument; ok is false for the
// shell form, which needs a shell the runtime image does not have.
func execForm(args string) (argv []string, ok bool) {
	if !strings.HasPrefix(args, "[") {
		return nil, false
	}
	return argv, json.Unmarshal([]byte(args), &argv) == nil
}

func TestDockerfile(t *testing.T) {
	t.Parallel()
	stages := parseDockerfile(t, "../Dockerfile")
	require.GreaterOrEqual(t, len(stages), 2, "multi-stage")
	build, final := stages[0], stages[len(stages)-1]

	t.Run("BuildStage", func(t *testing.T) {
		require.Equal(t, "build", build.name, "FROM … AS build")
		require.True(t, strings.HasPrefix(build.from, "golang:"), build.from)
		var goBuild string
		for _, run := range build.all("RUN") {
			if strings.Contains(run.args, "go build") {
				goBuild = run.args
			}
		}
		require.Contains(t, goBuild, "CGO_ENABLED=0", "a static binary for a libc-less image")
		require.Contains(t, goBuild, "-trimpath")
		require.Contains(t, goBuild, "./cmd/keybroker")
	})

	// docker buildx build --platform linux/amd64,linux/arm64: the build
	// stage runs natively on the builder and cross-compiles for each
	// target (emulating arm64 to compile would take many times as long);
	// the runtime stage is the target's own (multi-arch) base image.
	t.Run("MultiArch", func(t *testing.T) {
		require.Equal(t, "$BUILDPLATFORM", build.platform, "FROM --platform=$BUILDPLATFORM golang… AS build")
		var args []string
		for _, a := range build.all("ARG") {
			args = append(args, strings.Fields(a.args)...)
		}
		require.Contains(t, args, "TARGETOS", "the build stage declares the target platform buildx passes")
		require.Contains(t, args, "TARGETARCH")
		var goBuild string
		for _, run := range build.all("RUN") {
			if strings.Contains(run.args, "go build") {
				goBuild = run.args
			}
		}
		require.Contains(t, goBuild, "GOOS=${TARGETOS}")
		require.Contains(t, goBuild, "GOARCH=${TARGETARCH}")
		require.Contains(t, goBuild, "-buildid=", "the release's reproducible flags (internal/cmd/release)")
		require.Empty(t, final.platform, "the runtime stage is the target platform's image")
		for _, s := range stages {
			if s.platform != "" {
				require.Equal(t, "build", s.name, "only the build stage runs on the build platform")
			}
		}
	})

	t.Run("FinalStageIsMinimalAndNonRoot", func(t *testing.T) {
		require.Regexp(t, `^(gcr\.io/distroless/static[^:]*:nonroot|scratch)$`, final.from)
		users := final.all("USER")
		require.NotEmpty(t, users, "the final stage names its user")
		user := users[len(users)-1].args
		uid, _, _ := strings.Cut(user, ":")
		require.NotContains(t, []string{"0", "root"}, uid)
		require.Regexp(t, regexp.MustCompile(`^[1-9][0-9]*$`), uid, "numeric, so runAsNonRoot can verify it")
		for _, run := range final.all("RUN") {
			_, ok := execForm(run.args)
			require.True(t, ok, "shell-form RUN in the final stage: %s", run.args)
		}
		for _, c := range final.all("COPY") {
			require.Contains(t, strings.Fields(c.args), "--from=build", "the final stage takes only the static binary: %s", c.args)
		}
	})

	// The PKCS#11 image (docker build --target pkcs11): the same binary
	// built with cgo, on Debian slim (a libc to load the HSM vendor's
	// module, and a package manager to add it), otherwise run like the
	// default image. The default image stays the static one.
	t.Run("PKCS11Target", func(t *testing.T) {
		byName := map[string]stage{}
		for _, s := range stages {
			byName[s.name] = s
		}
		buildCgo, ok := byName["build-pkcs11"]
		require.True(t, ok, "a stage FROM … AS build-pkcs11")
		image, ok := byName["pkcs11"]
		require.True(t, ok, "a stage FROM … AS pkcs11 (docker build --target pkcs11)")
		require.NotEqual(t, "pkcs11", final.name, "the default image (the last stage) is the static one")

		require.Equal(t, "golang:${GO_VERSION}-${DEBIAN_RELEASE}", buildCgo.from)
		require.Equal(t, "debian:${DEBIAN_RELEASE}-slim", image.from, "built on the Debian release it runs on, so the binary finds its libc")
		var goBuild string
		for _, run := range buildCgo.all("RUN") {
			if strings.Contains(run.args, "go build") {
				goBuild = run.args
			}
		}
		require.Contains(t, goBuild, "CGO_ENABLED=1")
		require.Contains(t, goBuild, "-trimpath")
		require.Contains(t, goBuild, "./cmd/keybroker")
		raw, err := os.ReadFile("../Dockerfile")
		require.NoError(t, err)
		require.Regexp(t, `(?m)^ARG DEBIAN_RELEASE=\S+$`, string(raw))

		copies := image.all("COPY")
		require.Len(t, copies, 1)
		require.Equal(t, "--from=build-pkcs11 /out/keybroker "+imageBinary, copies[0].args)
		var installs string
		for _, run := range image.all("RUN") {
			installs += run.args
		}
		require.Contains(t, installs, "ca-certificates", "CA roots for the JWKS and the KMS endpoints")
		users := image.all("USER")
		require.NotEmpty(t, users)
		require.Equal(t, "65532:65532", users[len(users)-1].args, "non-root and numeric, as the default image")
		for _, keyword := range []string{"ENV", "EXPOSE", "HEALTHCHECK", "ENTRYPOINT", "CMD"} {
			require.Equal(t, final.all(keyword), image.all(keyword), "%s as in the default image", keyword)
		}
	})

	t.Run("EntrypointAndHealthcheckAreExecForm", func(t *testing.T) {
		copies := final.all("COPY")
		require.Len(t, copies, 1)
		require.True(t, strings.HasSuffix(copies[0].args, " "+imageBinary), copies[0].args)

		eps := final.all("ENTRYPOINT")
		require.Len(t, eps, 1)
		argv, ok := execForm(eps[0].args)
		require.True(t, ok, "ENTRYPOINT in exec form, so SIGTERM reaches keybroker: %s", eps[0].args)
		require.Equal(t, []string{imageBinary}, argv)
		cmds := final.all("CMD")
		require.Len(t, cmds, 1)
		argv, ok = execForm(cmds[0].args)
		require.True(t, ok)
		require.Equal(t, []string{"serve"}, argv)

		hcs := final.all("HEALTHCHECK")
		require.Len(t, hcs, 1)
		_, cmd, found := strings.Cut(hcs[0].args, "CMD ")
		require.True(t, found, hcs[0].args)
		argv, ok = execForm(strings.TrimSpace(cmd))
		require.True(t, ok, "HEALTHCHECK CMD in exec form (no shell): %s", cmd)
		require.Equal(t, []string{imageBinary, "healthcheck"}, argv)

		var env []string
		for _, e := range final.all("ENV") {
			env = append(env, e.args)
		}
		require.Contains(t, env, "KEYBROKER_ENV=production", "--dev is refused in the image")
		require.Equal(t, "3001", final.all("EXPOSE")[0].args)
	})

	t.Run("DockerignoreKeepsSecretsOut", func(t *testing.T) {
		raw, err := os.ReadFile("../.dockerignore")
		require.NoError(t, err)
		var patterns []string
		for _, l := range strings.Split(string(raw), "\n") {
			if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
				patterns = append(patterns, l)
			}
		}
		for _, p := range []string{".git", "**/.env", "**/secrets/", "**/*.cred"} {
			require.Contains(t, patterns, p)
		}
	})
}

// TestStaticBinaryRefusesPKCS11: the binary of the default image (static,
// no cgo) cannot load an HSM's module; a pkcs11: KEK makes it say so and
// name the build that can.
func TestStaticBinaryRefusesPKCS11(t *testing.T) {
	t.Parallel()
	pinFile := filepath.Join(t.TempDir(), "hsm-pin")
	require.NoError(t, os.WriteFile(pinFile, []byte("1234\n"), 0o600))
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, keybrokerBinary(t), "kek", "check")
	cmd.Env = []string{
		"PATH=" + os.Getenv("PATH"),
		"KEYBROKER_KEK=pkcs11:token=keybroker;object=kek?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:" + pinFile + "&id=hsm-1",
	}
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	require.ErrorAs(t, err, &exit, "kek check passed with a pkcs11: KEK in the static binary:\n%s", out)
	require.Equal(t, 1, exit.ExitCode(), "%s", out)
	require.Contains(t, string(out), "this keybroker was built without PKCS#11 support; build with `make build-pkcs11` (cgo) or use the keybroker:pkcs11 image")
}
