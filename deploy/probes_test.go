package deploy

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/internal/jwtissuer"
	"github.com/keybroker/keybroker/internal/testkit/pgtest"
)

// server is a keybroker serve process started from the built binary.
type server struct {
	addr   string
	issuer *jwtissuer.Issuer // signs tokens the server accepts
	stop   func()            // SIGTERM, and wait until it exits; idempotent
}

// startServer runs `keybroker serve` on a loopback port with a fresh
// PostgreSQL database (as a plain role), a KEK file and a test JWKS, and
// returns once it logs that it serves. env entries (KEY=VALUE) override
// the defaults; with a DATABASE_URL among them no database is made. It is
// stopped with SIGTERM when the test ends, or by stop.
func startServer(t *testing.T, env ...string) *server {
	t.Helper()
	bin := keybrokerBinary(t)
	issuer, err := jwtissuer.New("https://auth.test")
	require.NoError(t, err)
	jwks := http.Server{Handler: issuer.JWKSHandler(), ReadHeaderTimeout: 5 * time.Second}
	jwksLn, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	go func() { _ = jwks.Serve(jwksLn) }()
	t.Cleanup(func() { _ = jwks.Close() })

	kekFile := filepath.Join(t.TempDir(), "kek")
	key := make([]byte, 32)
	rand.Read(key)
	require.NoError(t, os.WriteFile(kekFile, []byte(base64.StdEncoding.EncodeToString(key)), 0o400))

	databaseURL := ""
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "DATABASE_URL="); ok {
			databaseURL = v
		}
	}
	if databaseURL == "" {
		role, _ := pgtest.NewPlainDatabase(t)
		databaseURL = role.URL
	}
	cmd := exec.Command(bin, "serve")
	cmd.Env = []string{
		"PATH=" + os.Getenv("PATH"),
		"DATABASE_URL=" + databaseURL,
		"KEYBROKER_KEK=file://" + kekFile + "?id=deploy-test",
		"KEYBROKER_JWKS_URL=http://" + jwksLn.Addr().String() + "/jwks.json",
		"KEYBROKER_JWT_ISSUER=" + issuer.Issuer(),
		"KEYBROKER_JWT_AUDIENCE=" + issuer.Issuer(),
		"KEYBROKER_ADDR=127.0.0.1:0",
		"KEYBROKER_ENV=production",
		"KEYBROKER_LOG_FORMAT=json",
	}
	cmd.Env = append(cmd.Env, env...) // the last of a duplicate key wins
	stderr, err := cmd.StderrPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	// The scanner owns logs until it ends; the test reads them only after.
	var logs strings.Builder
	addrc := make(chan string, 1)
	scanDone := make(chan struct{})
	go func() {
		defer close(scanDone)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			logs.WriteString(sc.Text() + "\n")
			var line struct{ Msg, Addr string }
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "keybroker serving" {
				addrc <- line.Addr
			}
		}
	}()
	var waitErr error // set before exited closes
	exited := make(chan struct{})
	go func() {
		<-scanDone
		waitErr = cmd.Wait()
		close(exited)
	}()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			_ = cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-exited:
			case <-time.After(30 * time.Second):
				_ = cmd.Process.Kill()
				<-exited
			}
		})
	}
	t.Cleanup(stop)
	s := &server{issuer: issuer, stop: stop}
	select {
	case s.addr = <-addrc:
	case <-exited:
		t.Fatalf("keybroker exited before serving: %v\n%s", waitErr, logs.String())
	case <-time.After(60 * time.Second):
		t.Fatal("keybroker did not serve within 60s")
	}
	return s
}

// TestProbesAnswer runs the binary the deployment files start and calls
// every endpoint they probe, the way they probe it: the Kubernetes
// probes' paths over HTTP, and the compose and image health checks as
// the commands they are.
func TestProbesAnswer(t *testing.T) {
	t.Parallel()
	project, err := loadCompose(t, "compose/.env.example")
	require.NoError(t, err)
	kb, err := project.GetService("keybroker")
	require.NoError(t, err)
	composeCheck := []string(kb.HealthCheck.Test)[1:] // after "CMD"
	_, dep := one[deployment](t, loadManifests(t), "Deployment")
	c := dep.Spec.Template.Spec.Containers[0]
	var imageCheck []string
	stages := parseDockerfile(t, "../Dockerfile")
	for _, hc := range stages[len(stages)-1].all("HEALTHCHECK") { // the default image
		_, cmd, _ := strings.Cut(hc.args, "CMD ")
		imageCheck, _ = execForm(strings.TrimSpace(cmd))
	}
	require.NotEmpty(t, imageCheck)

	srv := startServer(t)
	bin := keybrokerBinary(t)

	for name, p := range map[string]*probe{"readiness": c.ReadinessProbe, "liveness": c.LivenessProbe, "startup": c.StartupProbe} {
		require.NotNil(t, p, name)
		require.Equal(t, http.StatusOK, awaitStatus(t, "http://"+srv.addr+p.HTTPGet.Path), "%s probe %s", name, p.HTTPGet.Path)
	}

	// The compose check as written, with the service's address aimed at
	// the test server.
	require.Equal(t, imageBinary, composeCheck[0])
	compose := exec.Command(bin, composeCheck[1:]...)
	compose.Env = []string{"KEYBROKER_ADDR=" + srv.addr}
	out, err := compose.CombinedOutput()
	require.NoError(t, err, "compose health check: %s", out)

	// The image's check takes no URL: it finds the port from $PORT, as
	// serve does (the image sets neither, so both default to 3001).
	require.Equal(t, []string{imageBinary, "healthcheck"}, imageCheck)
	_, port, err := net.SplitHostPort(srv.addr)
	require.NoError(t, err)
	cmd := exec.Command(bin, imageCheck[1:]...)
	cmd.Env = []string{"PORT=" + port}
	out, err = cmd.CombinedOutput()
	require.NoError(t, err, "image health check: %s", out)
	require.Equal(t, "ok\n", string(out))
}

// awaitStatus GETs url until it answers 200 or 20 s pass, as a kubelet
// would, and returns the last status. Readiness may report a check as
// pending just after start.
func awaitStatus(t *testing.T, target string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	status := 0
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
		require.NoError(t, err)
		if res, err := http.DefaultClient.Do(req); err == nil {
			res.Body.Close()
			status = res.StatusCode
			if status == http.StatusOK {
				return status
			}
		}
		select {
		case <-ctx.Done():
			return status
		case <-tick.C:
		}
	}
}
