package main

// These tests run the built binary the way systemd and Docker run it: a
// notify socket the test owns, credentials in $CREDENTIALS_DIRECTORY, a
// socket passed as fd 3, secrets under /run/secrets. There is no systemd
// PID 1 or Docker engine on the test machines; the protocols are small and
// the test plays the service manager's part.

import (
	"context"
	"crypto/rand"
	"debug/elf"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/internal/jwtissuer"
	"github.com/keybroker/keybroker/internal/testkit/pgtest"
	"github.com/keybroker/keybroker/migrations"
	"github.com/keybroker/keybroker/vaultapi"
)

// Bounds of the waits on the child process.
const (
	startWithin = 60 * time.Second
	stopWithin  = 30 * time.Second
)

// The binary the package's process tests run, built once; TestMain
// removes binaryDir.
var (
	binaryOnce sync.Once
	binaryDir  string
	binaryPath string
	binaryErr  error
)

// keybrokerBinary builds keybroker as the Dockerfile does (static, no
// cgo), once for all the tests of the package.
func keybrokerBinary(t *testing.T) string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("SKIPPED LOUDLY: no go tool on PATH to build the keybroker binary")
	}
	binaryOnce.Do(func() {
		if binaryDir, binaryErr = os.MkdirTemp("", "keybroker-cmd-test"); binaryErr != nil {
			return
		}
		bin := filepath.Join(binaryDir, "keybroker")
		cmd := exec.Command(goTool, "build", "-trimpath", "-o", bin, ".")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			binaryErr = fmt.Errorf("go build: %w\n%s", err, out)
			return
		}
		binaryPath = bin
	})
	require.NoError(t, binaryErr)
	return binaryPath
}

// child is a keybroker process under test.
type child struct {
	cmd    *exec.Cmd
	stderr *syncBuffer
	done   chan struct{}
	err    error // Wait's result, set before done closes
}

func startChild(t *testing.T, argv []string, env []string, files ...*os.File) *child {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = env
	c := &child{cmd: cmd, stderr: &syncBuffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = c.stderr, c.stderr
	cmd.ExtraFiles = files
	require.NoError(t, cmd.Start())
	go func() {
		c.err = cmd.Wait()
		close(c.done)
	}()
	t.Cleanup(func() {
		select {
		case <-c.done:
		default:
			_ = cmd.Process.Kill()
			<-c.done
		}
	})
	return c
}

// wait returns the exit code once the child has exited.
func (c *child) wait(t *testing.T) int {
	t.Helper()
	select {
	case <-c.done:
	case <-time.After(stopWithin):
		t.Fatalf("keybroker did not exit within %s\n%s", stopWithin, c.stderr.String())
	}
	var exit *exec.ExitError
	if errors.As(c.err, &exit) {
		return exit.ExitCode()
	}
	require.NoError(t, c.err)
	return 0
}

// waitFor reads notifications until one starts with prefix; it fails the
// test if the child exits first or nothing matching arrives in time.
func waitFor(t *testing.T, sock *notifySocket, c *child, prefix string, within time.Duration) (msg string, before []string) {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		msg, err := sock.read(250 * time.Millisecond)
		if err == nil {
			if strings.HasPrefix(msg, prefix) {
				return msg, before
			}
			before = append(before, msg)
			continue
		}
		select {
		case <-c.done:
			t.Fatalf("keybroker exited (%v) before %q\n%s", c.err, prefix, c.stderr.String())
		default:
		}
	}
	t.Fatalf("no %q within %s (got %q)\n%s", prefix, within, before, c.stderr.String())
	return "", nil
}

// statusAddr is the address in "READY=1\nSTATUS=serving on ADDR".
func statusAddr(t *testing.T, ready string) string {
	t.Helper()
	_, addr, ok := strings.Cut(ready, "STATUS=serving on ")
	require.True(t, ok, "READY without a serving status: %q", ready)
	return strings.TrimSpace(addr)
}

// rig is what every run of the binary shares: one database, one token
// issuer, one build.
type rig struct {
	bin    string
	dbURL  string
	issuer *jwtissuer.Issuer
	jwks   string
}

func (r *rig) env(extra ...string) []string {
	return append([]string{
		"PATH=" + os.Getenv("PATH"),
		"DATABASE_URL=" + r.dbURL,
		"KEYBROKER_JWKS_URL=" + r.jwks,
		"KEYBROKER_JWT_ISSUER=" + r.issuer.Issuer(),
		"KEYBROKER_JWT_AUDIENCE=" + r.issuer.Issuer(),
		"KEYBROKER_ADDR=127.0.0.1:0",
		"KEYBROKER_ENV=production",
		"KEYBROKER_LOG_FORMAT=json",
		"KEYBROKER_SHUTDOWN_TIMEOUT=5s",
		// A mistaken reach for cloud credentials fails at once.
		"GOOGLE_APPLICATION_CREDENTIALS=/nonexistent",
		"AWS_EC2_METADATA_DISABLED=true",
	}, extra...)
}

// call makes one request (no retries) and decodes the JSON answer.
func (r *rig) call(t *testing.T, addr, method, path, user string) (int, map[string]any) {
	t.Helper()
	tok, err := r.issuer.Mint(jwtissuer.Claims{Subject: user})
	require.NoError(t, err)
	req, err := http.NewRequest(method, "http://"+addr+vaultapi.BasePath+path, nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+tok)
	client := &http.Client{Timeout: 10 * time.Second}
	res, err := client.Do(req)
	require.NoError(t, err)
	defer res.Body.Close()
	var body map[string]any
	require.NoError(t, json.NewDecoder(res.Body).Decode(&body))
	return res.StatusCode, body
}

func writeKEK(t *testing.T, path string) {
	t.Helper()
	key := make([]byte, 32)
	rand.Read(key)
	require.NoError(t, os.WriteFile(path, []byte(base64.StdEncoding.EncodeToString(key)+"\n"), 0o400))
}

// TestBinaryUnderSystemd builds keybroker once and runs it as systemd and
// Docker would.
func TestBinaryUnderSystemd(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	issuer, err := jwtissuer.New("https://auth.test")
	require.NoError(t, err)
	jwks := httptest.NewServer(issuer.JWKSHandler())
	t.Cleanup(jwks.Close)
	role, _ := pgtest.NewPlainDatabase(t) // keybroker refuses a superuser
	r := &rig{bin: keybrokerBinary(t), dbURL: role.URL, issuer: issuer, jwks: jwks.URL}

	t.Run("StaticBinary", func(t *testing.T) {
		// The distroless static image has no libc: the binary must not
		// ask for a dynamic loader.
		f, err := elf.Open(r.bin)
		require.NoError(t, err)
		defer f.Close()
		for _, p := range f.Progs {
			require.NotEqual(t, elf.PT_INTERP, p.Type, "the binary is dynamically linked")
		}
	})

	t.Run("NotifyWatchdogStopping", func(t *testing.T) {
		creds := t.TempDir()
		writeKEK(t, filepath.Join(creds, "keybroker-kek"))
		sock := newNotifySocket(t)
		c := startChild(t, []string{r.bin, "serve"}, r.env(
			"CREDENTIALS_DIRECTORY="+creds,
			"KEYBROKER_KEK=systemd-credential://keybroker-kek?id=sd-2026",
			"NOTIFY_SOCKET="+sock.path,
			"WATCHDOG_USEC=200000", // WATCHDOG_PID unset: the pings are ours
		))

		ready, before := waitFor(t, sock, c, "READY=1", startWithin)
		require.Empty(t, before, "READY=1 is the first notification")
		addr := statusAddr(t, ready)
		// At READY=1 the server already answers (one attempt, no retry),
		// the migrations are applied and the KEK from the credential wraps.
		code, body := r.call(t, addr, http.MethodGet, "/status", "alice")
		require.Equal(t, http.StatusOK, code, body)
		require.Equal(t, false, body["vaultExists"])
		all, err := migrations.All()
		require.NoError(t, err)
		var applied int
		pool := pgtest.NewPool(t, r.dbURL)
		require.NoError(t, pool.QueryRow(context.Background(),
			"SELECT count(*) FROM "+pgx.Identifier{"keybroker", "keybroker_migrations"}.Sanitize()).Scan(&applied))
		require.Equal(t, len(all), applied)
		code, body = r.call(t, addr, http.MethodPost, "/init", "alice")
		require.Equal(t, http.StatusOK, code, body)
		require.Equal(t, "sd-2026", body["kekId"])
		require.Contains(t, c.stderr.String(), "KEK check passed")

		// Two pings at 100 ms each; bounded well above that.
		waitFor(t, sock, c, "WATCHDOG=1", 10*time.Second)
		waitFor(t, sock, c, "WATCHDOG=1", 10*time.Second)

		require.NoError(t, c.cmd.Process.Signal(syscall.SIGTERM))
		waitFor(t, sock, c, "STOPPING=1", stopWithin)
		require.Equal(t, 0, c.wait(t), c.stderr.String())
		require.Empty(t, sock.drain(), "nothing after STOPPING=1")
		require.Contains(t, c.stderr.String(), `"msg":"stopped"`)
		require.NotContains(t, c.stderr.String(), body["masterKey"])
	})

	t.Run("SocketActivation", func(t *testing.T) {
		creds := t.TempDir()
		writeKEK(t, filepath.Join(creds, "keybroker-kek"))
		passed := listenerFile(t)
		sock := newNotifySocket(t)
		// LISTEN_PID must be the pid of the process that serves, known
		// only once it runs: the shell exports its own pid and execs
		// keybroker, which keeps that pid (as systemd does after fork).
		c := startChild(t, []string{"/bin/sh", "-c", `LISTEN_PID=$$; export LISTEN_PID; exec "$0" "$@"`, r.bin, "serve"},
			r.env(
				"CREDENTIALS_DIRECTORY="+creds,
				"KEYBROKER_KEK=systemd-credential://keybroker-kek?id=sd-2026",
				"NOTIFY_SOCKET="+sock.path,
				"LISTEN_FDS=1",
				"LISTEN_FDNAMES=keybroker.socket",
			), passed.file)
		passed.file.Close() // the child holds its copy

		ready, _ := waitFor(t, sock, c, "READY=1", startWithin)
		require.Equal(t, passed.addr, statusAddr(t, ready), "serves on the passed socket, not on KEYBROKER_ADDR")
		code, body := r.call(t, passed.addr, http.MethodGet, "/status", "bob")
		require.Equal(t, http.StatusOK, code, body)
		require.Contains(t, c.stderr.String(), "socket activation: serving on the socket systemd passed")

		require.NoError(t, c.cmd.Process.Signal(syscall.SIGTERM))
		waitFor(t, sock, c, "STOPPING=1", stopWithin)
		require.Equal(t, 0, c.wait(t), c.stderr.String())
	})

	t.Run("SeveralSocketsRefused", func(t *testing.T) {
		creds := t.TempDir()
		writeKEK(t, filepath.Join(creds, "keybroker-kek"))
		one, two := listenerFile(t), listenerFile(t)
		sock := newNotifySocket(t)
		c := startChild(t, []string{"/bin/sh", "-c", `LISTEN_PID=$$; export LISTEN_PID; exec "$0" "$@"`, r.bin, "serve"},
			r.env(
				"CREDENTIALS_DIRECTORY="+creds,
				"KEYBROKER_KEK=systemd-credential://keybroker-kek?id=sd-2026",
				"NOTIFY_SOCKET="+sock.path,
				"LISTEN_FDS=2",
			), one.file, two.file)
		one.file.Close()
		two.file.Close()
		require.Equal(t, 1, c.wait(t))
		require.Contains(t, c.stderr.String(), "systemd passed 2 sockets; keybroker serves exactly one")
		require.Empty(t, sock.drain(), "no READY=1 for a refused start")
	})

	// The original service's outage: a missing secret made it boot on a
	// dev KEK. Each of these refuses to start, says why, and never tells
	// systemd it is ready.
	refuses := func(t *testing.T, argv []string, env []string, want ...string) {
		t.Helper()
		sock := newNotifySocket(t)
		c := startChild(t, argv, append(env, "NOTIFY_SOCKET="+sock.path))
		require.Equal(t, 1, c.wait(t), c.stderr.String())
		for _, w := range want {
			require.Contains(t, c.stderr.String(), w)
		}
		require.NotContains(t, c.stderr.String(), "keybroker serving")
		require.Empty(t, sock.drain(), "no READY=1 for a refused start")
	}

	t.Run("RefusesMissingOrEmptyCredential", func(t *testing.T) {
		const uri = "KEYBROKER_KEK=systemd-credential://keybroker-kek?id=sd-2026"
		creds := t.TempDir()
		refuses(t, []string{r.bin, "serve"}, r.env(uri),
			"$CREDENTIALS_DIRECTORY is not set: run keybroker as a systemd service with LoadCredential=keybroker-kek:")
		refuses(t, []string{r.bin, "serve"}, r.env(uri, "CREDENTIALS_DIRECTORY="+creds),
			`no credential "keybroker-kek"`)
		require.NoError(t, os.WriteFile(filepath.Join(creds, "keybroker-kek"), nil, 0o400))
		refuses(t, []string{r.bin, "serve"}, r.env(uri, "CREDENTIALS_DIRECTORY="+creds),
			`credential "keybroker-kek"`, "the KEK is empty")
	})

	t.Run("DockerSecret", func(t *testing.T) {
		const uri = "KEYBROKER_KEK=docker-secret://keybroker_kek?id=docker-2026"
		if _, err := os.Stat("/run/secrets/keybroker_kek"); errors.Is(err, os.ErrNotExist) {
			refuses(t, []string{r.bin, "serve"}, r.env(uri),
				`docker: no secret "keybroker_kek" at /run/secrets/keybroker_kek`)
		}
		// Docker mounts secrets at /run/secrets, which the test may not
		// write to on the host: a private user and mount namespace puts
		// a tmpfs there for the child alone.
		if out, err := exec.Command("unshare", "--user", "--map-root-user", "--mount", "true").CombinedOutput(); err != nil {
			t.Skipf("SKIPPED LOUDLY: cannot create a user+mount namespace to fake /run/secrets (unshare: %v %s); the empty-secret and serving cases did not run", err, out)
		}
		inContainer := func(secret string) []string {
			return []string{"unshare", "--user", "--map-root-user", "--mount", "/bin/sh", "-c",
				`mount -t tmpfs -o mode=0755 tmpfs /run && mkdir /run/secrets &&
				 if [ -n "$0" ]; then cp "$0" /run/secrets/keybroker_kek; fi && exec "$@"`,
				secret, r.bin, "serve"}
		}
		refuses(t, inContainer(""), r.env(uri), `docker: no secret "keybroker_kek" at /run/secrets/keybroker_kek`)
		empty := filepath.Join(t.TempDir(), "empty")
		require.NoError(t, os.WriteFile(empty, nil, 0o400))
		refuses(t, inContainer(empty), r.env(uri), `docker: secret "keybroker_kek"`, "the KEK is empty")

		secret := filepath.Join(t.TempDir(), "kek")
		writeKEK(t, secret)
		sock := newNotifySocket(t)
		// A schema of its own: the database holds rows of the systemd
		// subtests' KEK, and serve refuses to start without a KEK that
		// rows still need.
		c := startChild(t, inContainer(secret), r.env(uri, "NOTIFY_SOCKET="+sock.path, "KEYBROKER_SCHEMA=docker_secret"))
		ready, _ := waitFor(t, sock, c, "READY=1", startWithin)
		code, body := r.call(t, statusAddr(t, ready), http.MethodPost, "/init", "carol")
		require.Equal(t, http.StatusOK, code, body)
		require.Equal(t, "docker-2026", body["kekId"])
		require.NoError(t, c.cmd.Process.Signal(syscall.SIGTERM))
		require.Equal(t, 0, c.wait(t), c.stderr.String())
	})
}

// passedSocket is a listening socket to hand to the child as fd 3+.
type passedSocket struct {
	file *os.File
	addr string
}

func listenerFile(t *testing.T) passedSocket {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close() // the file is a duplicate that keeps the socket open
	f, err := ln.(*net.TCPListener).File()
	require.NoError(t, err)
	t.Cleanup(func() { f.Close() })
	return passedSocket{file: f, addr: ln.Addr().String()}
}
