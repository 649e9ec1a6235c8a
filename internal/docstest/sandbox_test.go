package docstest

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/internal/faults"
	"github.com/keybroker/keybroker/internal/jwtissuer"
	"github.com/keybroker/keybroker/internal/testkit/pgtest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	faults.RemoveBuild()
	os.Exit(code)
}

// scriptTimeout bounds one block's run.
const scriptTimeout = 2 * time.Minute

// sandbox is where a block runs: a fresh directory as its working
// directory and HOME, with bin/keybroker (the real binary, built once)
// there and on PATH, and nothing of the test's environment but PATH.
type sandbox struct {
	dir string
	bin string // the keybroker binary
	env []string
}

func newSandbox(t *testing.T) *sandbox {
	t.Helper()
	bin := faults.Keybroker(t)
	dir := t.TempDir()
	require.NoError(t, os.Mkdir(filepath.Join(dir, "bin"), 0o755))
	require.NoError(t, os.Symlink(bin, filepath.Join(dir, "bin", "keybroker")))
	return &sandbox{dir: dir, bin: bin, env: []string{
		"PATH=" + filepath.Join(dir, "bin") + string(os.PathListSeparator) + os.Getenv("PATH"),
		"HOME=" + dir, "LC_ALL=C",
	}}
}

// path is name inside the sandbox.
func (s *sandbox) path(name string) string { return filepath.Join(s.dir, filepath.FromSlash(name)) }

// shell returns bash running script in dir (the sandbox when empty), as a
// careful operator would paste it: stopping at the first failure.
func (s *sandbox) shell(ctx context.Context, dir, script string, env ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "bash", "-e", "-o", "pipefail", "-c", script)
	cmd.Dir = dir
	if dir == "" {
		cmd.Dir = s.dir
	}
	cmd.Env = append(append([]string{}, s.env...), env...)
	return cmd
}

// run runs script and returns its combined output; it fails the test
// when the script fails.
func (s *sandbox) run(t *testing.T, dir, script string, env ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), scriptTimeout)
	defer cancel()
	out, err := s.shell(ctx, dir, script, env...).CombinedOutput()
	require.NoError(t, err, "the block, as run:\n%s\noutput:\n%s", script, out)
	return string(out)
}

// writeKEK writes a fresh KEK, as `keybroker kek generate` makes it, to
// name in the sandbox with mode 0400, and returns it.
func (s *sandbox) writeKEK(t *testing.T, name string) string {
	t.Helper()
	out, err := exec.Command(s.bin, "kek", "generate").Output()
	require.NoError(t, err)
	p := s.path(name)
	require.NoError(t, os.MkdirAll(filepath.Dir(p), 0o700))
	require.NoError(t, os.WriteFile(p, out, 0o400))
	return strings.TrimSpace(string(out))
}

// rewrite replaces each old with its new in body: how a block's example
// hosts and paths become the test's. Every old must be in the block, so a
// changed document fails here instead of running something else.
func rewrite(t *testing.T, body string, pairs ...string) string {
	t.Helper()
	require.Zero(t, len(pairs)%2)
	for i := 0; i < len(pairs); i += 2 {
		require.Contains(t, body, pairs[i], "the block no longer says %q: update its runner", pairs[i])
		body = strings.ReplaceAll(body, pairs[i], pairs[i+1])
	}
	return body
}

// issuer is a token issuer whose JWKS is served over HTTPS on loopback,
// the way Better Auth serves it, with a CA file keybroker can trust
// (SSL_CERT_FILE).
type issuer struct {
	*jwtissuer.Issuer
	jwksURL string // https://127.0.0.1:PORT/api/auth/jwks
	caFile  string
}

func newIssuer(t *testing.T, name string) *issuer {
	t.Helper()
	iss, err := jwtissuer.New(name)
	require.NoError(t, err)
	mux := http.NewServeMux()
	mux.Handle("/api/auth/jwks", iss.JWKSHandler())
	srv := httptest.NewTLSServer(mux)
	t.Cleanup(srv.Close)
	ca := filepath.Join(t.TempDir(), "ca.pem")
	require.NoError(t, os.WriteFile(ca, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o644))
	return &issuer{Issuer: iss, jwksURL: srv.URL + "/api/auth/jwks", caFile: ca}
}

func (i *issuer) token(t *testing.T, user string) string {
	t.Helper()
	tok, err := i.MintSubject(user)
	require.NoError(t, err)
	return tok
}

// serverEnv is what keybroker serve needs beside its store and KEK:
// the issuer's JWKS, pinned to its iss and aud, on a free loopback port.
func (i *issuer) serverEnv() []string {
	return []string{"KEYBROKER_JWKS_URL=" + i.jwksURL, "KEYBROKER_JWT_ISSUER=" + i.Issuer.Issuer(),
		"KEYBROKER_JWT_AUDIENCE=" + i.Issuer.Issuer(), "SSL_CERT_FILE=" + i.caFile, "KEYBROKER_ADDR=127.0.0.1:0"}
}

// vault calls a vault route of a serving keybroker as user and decodes
// the JSON answer.
func vault(t *testing.T, baseURL, method, route, token string) (int, map[string]any) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, baseURL+"/api/v1/me/encryption-vault/"+route, nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	var m map[string]any
	require.NoError(t, json.Unmarshal(body, &m), "%s", body)
	return resp.StatusCode, m
}

// loopbackURL turns a serving address (perhaps [::]:PORT) into a URL on
// 127.0.0.1.
func loopbackURL(t *testing.T, serverURL string) string {
	t.Helper()
	u, err := url.Parse(serverURL)
	require.NoError(t, err)
	return "http://" + net.JoinHostPort("127.0.0.1", u.Port())
}

// storeWithVaults is a PostgreSQL database for a plain role, migrated by
// a keybroker that served it with the environment KEK oldKEK (id env-v1)
// and made the vaults of users: what an install of the original service
// holds before a rotation. It returns the role's URL.
func storeWithVaults(t *testing.T, s *sandbox, oldKEK string, users ...string) string {
	t.Helper()
	role, _ := pgtest.NewPlainDatabase(t)
	iss := newIssuer(t, "https://auth.example.com")
	srv := faults.StartServer(t, s.bin, append(iss.serverEnv(), "DATABASE_URL="+role.URL, "MANA_AUTH_KEK="+oldKEK, "HOME="+s.dir))
	for _, u := range users {
		status, body := vault(t, loopbackURL(t, srv.URL), http.MethodPost, "init", iss.token(t, u))
		require.Equal(t, http.StatusOK, status, "%v", body)
		require.Equal(t, "env-v1", body["kekId"])
	}
	srv.Stop(t)
	return role.URL
}

// requireSameWords: each fragment is in the document's block and in what
// the command printed — the words the two must agree on.
func requireSameWords(t *testing.T, doc, got string, fragments ...string) {
	t.Helper()
	for _, f := range fragments {
		require.Contains(t, doc, f, "the document's example no longer says %q", f)
		require.Contains(t, got, f, "the command does not print %q as the document shows", f)
	}
}

func init() {
	// A JWKS fetch or an HTTP call of this package never hangs a test.
	http.DefaultClient.Timeout = 30 * time.Second
}
