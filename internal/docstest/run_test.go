package docstest

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/internal/faults"
	"github.com/keybroker/keybroker/internal/testkit/kmstest/localkms"
	"github.com/keybroker/keybroker/internal/testkit/pgtest"
)

// thisTest is how a document names this test in a runs-in marker.
const thisTest = "internal/docstest.TestDocCommandsRun"

// runner runs one block, as written but for the rewrites it states, and
// checks what it did.
type runner struct {
	doc   string // the document
	first string // the start of the block's first command
	run   func(t *testing.T, s *sandbox, b Block)
}

// runners are the blocks this test runs. A block marked runs-in this test
// needs one, and each one needs its block.
var runners = []runner{
	{"README.md", "make run ", runMakeTargets},
	{"README.md", "TOKEN=$(bin/keybroker dev token", runCurlAgainstMakeRun},
	{"README.md", "export DATABASE_URL=", runProductionQuickStart},
	{"README.md", "KEYBROKER_KEK='file:///etc/keybroker/kek-2026", runFileKEKRotation},
	{"deploy/README.md", "keybroker kek generate", runKEKGenerate},
	{"deploy/README.md", "rm -f secrets/pgpass", runNewPgpass},
	{"docs/grants.md", "MANA_AI_PUBLIC_KEY_PEM=", runGrantRecipients},
	{"docs/rotation.md", "keybroker serve\n", runServeRefusesRowsOfARemovedKEK},
	{"docs/rotation.md", "KEYBROKER_KEK='awskms:///alias/keybroker-2027", runNewKMSKey},
	{"docs/rotation.md", "KEYBROKER_KEK='awskms:///alias/keybroker?", runEnvIntoKMS},
	{"docs/rotation.md", "keybroker kek status\nkeybroker rewrap", runStatusAndRewrap},
	{"docs/rotation.md", "export KEYBROKER_KEK_2027=", runEnvRotation},
	{"docs/rotation.md", "keybroker kek generate > /etc/keybroker/kek-2027", runFileRotation},
	{"docs/rotation.md", "KEYBROKER_KEK=systemd-credential://keybroker-kek-2027", runCredentialRotation},
	{"docs/rotation.md", "keybroker kek status\n", runFormat1Closed},
}

// runnerFor returns the runner of b — of those whose first matches the
// start of b's commands, the longest — or nil.
func runnerFor(b Block) *runner {
	text := strings.Join(b.Commands(), "\n") + "\n"
	var best *runner
	for i, r := range runners {
		if r.doc == b.File && strings.HasPrefix(text, r.first) && (best == nil || len(r.first) > len(best.first)) {
			best = &runners[i]
		}
	}
	return best
}

// TestDocCommandsRun runs the documents' blocks that name it, against the
// real binary and PostgreSQL, each in a sandbox of its own.
func TestDocCommandsRun(t *testing.T) {
	t.Parallel()
	used := map[*runner]int{}
	var mine []Block
	for _, b := range allBlocks(t) {
		for _, ref := range b.RunsIn {
			if ref == thisTest {
				mine = append(mine, b)
			}
		}
	}
	for _, b := range mine {
		r := runnerFor(b)
		if !assertHasRunner(t, b, r) {
			continue
		}
		used[r]++
		t.Run(strings.ReplaceAll(b.File, "/", "_")+"_"+strconv.Itoa(b.Line), func(t *testing.T) {
			t.Parallel()
			r.run(t, newSandbox(t), b)
		})
	}
	for i := range runners {
		require.Equal(t, 1, used[&runners[i]], "runner %s %q: its block is gone or no longer marked runs-in %s", runners[i].doc, runners[i].first, thisTest)
	}
}

func assertHasRunner(t *testing.T, b Block, r *runner) bool {
	t.Helper()
	if r == nil {
		t.Errorf("%s is marked runs-in %s but no runner runs it: add one to runners", b, thisTest)
		return false
	}
	return true
}

// runMakeTargets: `make run` and `make test` are the targets the README
// says. They are not run here (make test is this suite; make run serves
// until stopped: cmd/keybroker.TestOperatorCommandsUseTheDevKEKOfMakeRun
// runs what it runs), but make prints what each would do (-n), and that is
// the dev server and the race-enabled suite.
func runMakeTargets(t *testing.T, s *sandbox, b Block) {
	script := rewrite(t, b.Body, "make run ", "make -n VERSION=docs COMMIT=docs run ", "make test ", "make -n test ")
	out := s.run(t, root(t), script)
	require.Regexp(t, `(?m)^bin/keybroker serve --dev$`, out, "make run: the dev server")
	require.Regexp(t, `go test .*-race.*\./\.\.\.`, out, "make test: every test, with the race detector")
	require.Contains(t, out, "go vet ./...", "make test: go vet")
}

// runCurlAgainstMakeRun: with the dev server of `make run` going (serve
// --dev in the sandbox, on a free port instead of 3001), the README's
// curl lines make a vault, fetch the same key and see the vault.
func runCurlAgainstMakeRun(t *testing.T, s *sandbox, b Block) {
	cmd := exec.Command(s.bin, "serve", "--dev")
	cmd.Dir = s.dir
	cmd.Env = append(append([]string{}, s.env...), "PORT=0")
	srv := faults.StartCommand(t, cmd)
	host := strings.TrimPrefix(srv.URL, "http://")
	out := s.run(t, "", rewrite(t, b.Body, "localhost:3001", host))
	dec := json.NewDecoder(strings.NewReader(out))
	var answers []map[string]any
	for {
		var m map[string]any
		if err := dec.Decode(&m); err == io.EOF {
			break
		} else {
			require.NoError(t, err, "%s", out)
		}
		answers = append(answers, m)
	}
	require.Len(t, answers, 3, "%s", out)
	require.NotEmpty(t, answers[0]["masterKey"], "init: %v", answers[0])
	require.Equal(t, answers[0]["masterKey"], answers[1]["masterKey"], "key: the same master key")
	require.Equal(t, true, answers[2]["vaultExists"], "status: %v", answers[2])
	srv.Stop(t)
}

// runProductionQuickStart: the README's production lines, with the test's
// database (a plain role) for db.internal and the test's issuer, serving
// its JWKS over HTTPS, for auth.example.com: config check passes, serve
// migrates and serves, and a token of that issuer gets a key.
func runProductionQuickStart(t *testing.T, s *sandbox, b Block) {
	role, _ := pgtest.NewPlainDatabase(t)
	iss := newIssuer(t, "https://auth.example.com")
	script := rewrite(t, b.Body,
		"postgres://keybroker@db.internal:5432/keybroker", role.URL,
		"https://auth.example.com/api/auth/jwks", iss.jwksURL,
		"\nbin/keybroker serve ", "\nexec bin/keybroker serve ") // the shell becomes the server: SIGTERM reaches it
	ctx := t.Context()
	cmd := s.shell(ctx, "", script, "SSL_CERT_FILE="+iss.caFile, "PORT=0")
	srv := faults.StartCommand(t, cmd)
	require.Contains(t, srv.Logs(), "serve would start", "config check, before serve")
	base := loopbackURL(t, srv.URL)
	status, init := vault(t, base, http.MethodPost, "init", iss.token(t, "alice"))
	require.Equal(t, http.StatusOK, status, "%v", init)
	status, key := vault(t, base, http.MethodGet, "key", iss.token(t, "alice"))
	require.Equal(t, http.StatusOK, status, "%v", key)
	require.Equal(t, init["masterKey"], key["masterKey"])
	require.Equal(t, "env-v1", key["kekId"], "MANA_AUTH_KEK is the original service's KEK, id env-v1")
	srv.Stop(t)
}

// kekCheck runs the block's settings (exported, as an environment file
// gives them) and then `keybroker kek check`, and returns its output.
func kekCheck(t *testing.T, s *sandbox, script string, env ...string) string {
	t.Helper()
	return s.run(t, "", "set -a\n"+script+"\nset +a\nkeybroker kek check", env...)
}

// runFileKEKRotation: the README's rotation example opens both KEKs.
func runFileKEKRotation(t *testing.T, s *sandbox, b Block) {
	s.writeKEK(t, "etc/keybroker/kek-2026")
	out := kekCheck(t, s, rewrite(t, b.Body, "/etc/keybroker/", s.path("etc/keybroker")+"/"), "MANA_AUTH_KEK="+s.writeKEK(t, "old"))
	require.Regexp(t, `file-2026\s+active\s+ok`, out)
	require.Regexp(t, `env-v1\s+decrypt-only\s+ok`, out)
}

// runKEKGenerate: 32 random bytes in base64, different each time.
func runKEKGenerate(t *testing.T, s *sandbox, b Block) {
	out := s.run(t, "", b.Body+"\n"+b.Body)
	lines := strings.Fields(out)
	require.Len(t, lines, 2)
	for _, l := range lines {
		key, err := base64.StdEncoding.DecodeString(l)
		require.NoError(t, err)
		require.Len(t, key, 32)
	}
	require.NotEqual(t, lines[0], lines[1])
}

// runNewPgpass: the password lines of a move to a plain role, run where
// the old install left a read-only pgpass: the role's password and its
// pgpass line agree, both 0400.
func runNewPgpass(t *testing.T, s *sandbox, b Block) {
	require.NoError(t, os.Mkdir(s.path("secrets"), 0o700))
	require.NoError(t, os.WriteFile(s.path("secrets/pgpass"), []byte("postgres:5432:keybroker:keybroker:old\n"), 0o400))
	s.run(t, "", b.Body)
	pw, err := os.ReadFile(s.path("secrets/keybroker_db_password"))
	require.NoError(t, err)
	require.Regexp(t, `^[0-9a-f]{64}$`, string(pw))
	pgpass, err := os.ReadFile(s.path("secrets/pgpass"))
	require.NoError(t, err)
	require.Equal(t, "postgres:5432:keybroker:keybroker:"+string(pw)+"\n", string(pgpass))
	for _, f := range []string{"secrets/keybroker_db_password", "secrets/pgpass"} {
		st, err := os.Stat(s.path(f))
		require.NoError(t, err)
		require.Equal(t, os.FileMode(0o400), st.Mode().Perm(), f)
	}
}

// runGrantRecipients: the grant settings with a worker's RSA key as the
// default recipient and a named one, made by keybroker grant keygen:
// grant check passes for both.
func runGrantRecipients(t *testing.T, s *sandbox, b Block) {
	require.NoError(t, os.MkdirAll(s.path("etc/keybroker"), 0o755))
	s.run(t, "", "keybroker grant keygen --algorithm rsa-oaep-256 --private-key worker.key > upstream-worker.pem\n"+
		"keybroker grant keygen --private-key missions.key --public-key etc/keybroker/missions.pem")
	script := rewrite(t, b.Body, "/etc/keybroker/", s.path("etc/keybroker")+"/")
	out := s.run(t, "", "set -a\n"+script+"\nset +a\nkeybroker grant check")
	require.Regexp(t, `default\s+rsa-oaep-256\s+ok`, out)
	require.Regexp(t, `missions\s+hpke-mlkem768-x25519\s+ok`, out)
}

// rotationEnv is a store of three vaults under the original service's
// KEK, and the environment that names it.
func rotationEnv(t *testing.T, s *sandbox) []string {
	t.Helper()
	old := s.writeKEK(t, "old")
	return []string{"DATABASE_URL=" + storeWithVaults(t, s, old, "alice", "bob", "carol"), "MANA_AUTH_KEK=" + old}
}

// runStatusAndRewrap: kek status and rewrap during a rotation from the
// original service's KEK print what the runbook shows.
func runStatusAndRewrap(t *testing.T, s *sandbox, b Block) {
	env := append(rotationEnv(t, s), "KEYBROKER_KEK=env://KEYBROKER_KEK_2027?id=kek-2027", "KEYBROKER_KEK_RETIRED=env://MANA_AUTH_KEK",
		"KEYBROKER_KEK_2027="+s.writeKEK(t, "new"))
	out := s.run(t, "", strings.Join(b.Commands(), "\n"), env...)
	requireSameWords(t, b.Body, out, "KEK id", "format", "rows", "share", "decrypt-only", "active",
		" rows with a server wrap; ", " zero-knowledge rows (", " of all: no server wrap, nothing to move)", "format 1: ", "re-wrap job: ",
		" rows re-wrapped ", " rows/s ")
	require.Regexp(t, `env-v1\s+2\s+3\s+100.0%\s+decrypt-only`, out, "before the run, every row on the old KEK")
	status := s.run(t, "", "keybroker kek status", env...)
	require.Regexp(t, `kek-2027\s+2\s+3\s+100.0%\s+active`, status, "after it, every row on the new one")
	require.Regexp(t, `env-v1\s+-\s+0\s+.*no rows left, it can be removed`, status)
}

// runEnvRotation: the runbook's environment-variable rotation: the new
// key in the variable the URI names, the old one decrypt-only; both
// check, and the re-wrap job empties the old one.
func runEnvRotation(t *testing.T, s *sandbox, b Block) {
	env := rotationEnv(t, s)
	out := s.run(t, "", b.Body+"\nkeybroker kek check\nkeybroker rewrap\nkeybroker kek status", env...)
	require.Regexp(t, `kek-2027\s+active\s+ok`, out)
	require.Regexp(t, `env-v1\s+decrypt-only\s+ok`, out)
	require.Regexp(t, `kek-2027\s+2\s+3\s+100.0%\s+active`, out, "kek status shows 0 rows on env-v1")
}

// runFileRotation: the runbook's file rotation, with the sandbox's etc.
func runFileRotation(t *testing.T, s *sandbox, b Block) {
	s.writeKEK(t, "etc/keybroker/kek-2026")
	out := kekCheck(t, s, rewrite(t, b.Body, "/etc/keybroker/", s.path("etc/keybroker")+"/"))
	require.Regexp(t, `kek-2027\s+active\s+ok`, out)
	require.Regexp(t, `kek-2026\s+decrypt-only\s+ok`, out)
	st, err := os.Stat(s.path("etc/keybroker/kek-2027"))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o400), st.Mode().Perm())
}

// runCredentialRotation: the environment file of the systemd rotation,
// with the two credentials its drop-in loads, as systemd hands them over.
func runCredentialRotation(t *testing.T, s *sandbox, b Block) {
	s.writeKEK(t, "credentials/keybroker-kek")
	s.writeKEK(t, "credentials/keybroker-kek-2027")
	out := kekCheck(t, s, b.Body, "CREDENTIALS_DIRECTORY="+s.path("credentials"))
	require.Regexp(t, `kek-2027\s+active\s+ok`, out)
	require.Regexp(t, `kek-2026\s+decrypt-only\s+ok`, out)
}

// runFormat1Closed: on a store keybroker made, format 1 is closed, and
// kek status says so in the runbook's words.
func runFormat1Closed(t *testing.T, s *sandbox, b Block) {
	role, _ := pgtest.NewPlainDatabase(t)
	env := []string{"DATABASE_URL=" + role.URL, "MANA_AUTH_KEK=" + s.writeKEK(t, "kek")}
	s.run(t, "", "keybroker migrate", env...)
	out := s.run(t, "", strings.Join(b.Commands(), "\n"), env...)
	requireSameWords(t, b.Body, out, "format 1: closed since ", ": a format-1 wrap no longer opens")
	require.Regexp(t, `format 1: closed since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d by `, out)
}

// consoleOutput is the output lines a console block shows after the
// prompt of command.
func consoleOutput(t *testing.T, b Block, command string) []string {
	t.Helper()
	_, after, ok := strings.Cut(b.Body, "$ "+command+"\n")
	require.True(t, ok, "%s shows no %q", b, command)
	out, _, _ := strings.Cut(after, "\n$ ")
	return strings.Split(strings.TrimRight(out, "\n"), "\n")
}

// digits stand for the counts, times and ids that differ from run to run.
var digits = regexp.MustCompile(`[0-9][0-9,.]*`)

// runServeRefusesRowsOfARemovedKEK: serve, with the original service's
// KEK removed from the configuration while rows still need it, refuses
// to start with the runbook's message, line for line (counts aside).
func runServeRefusesRowsOfARemovedKEK(t *testing.T, s *sandbox, b Block) {
	env := rotationEnv(t, s)
	iss := newIssuer(t, "https://auth.example.com")
	env = append(append(env[:1:1], iss.serverEnv()...), "KEYBROKER_KEK=env://KEYBROKER_KEK_2027?id=kek-2027", "KEYBROKER_KEK_2027="+s.writeKEK(t, "new"))
	ctx, cancel := context.WithTimeout(t.Context(), scriptTimeout)
	defer cancel()
	out, err := s.shell(ctx, "", strings.Join(b.Commands(), "\n"), env...).CombinedOutput()
	require.Error(t, err, "serve started without the KEK its rows need:\n%s", out)
	want := consoleOutput(t, b, "keybroker serve")
	_, tail, ok := strings.Cut(string(out), want[0][:30])
	require.True(t, ok, "serve did not say %q:\n%s", want[0][:30], out)
	got := strings.Split(strings.TrimRight(want[0][:30]+tail, "\n"), "\n")
	require.Len(t, got, len(want), "%s", out)
	for i := range want {
		require.Equal(t, digits.ReplaceAllString(want[i], "N"), digits.ReplaceAllString(got[i], "N"))
	}
	require.Contains(t, got[0], `"env-v1" (3 rows)`)
}

// awsEnv is a local-kms on loopback with keys under aliases, the
// environment that reaches it (the SDK's static credentials), and the
// rewrite that points a documented awskms:// URI at it (endpoint=; the
// region is local-kms's, eu-central-1, as in the documents).
func awsEnv(t *testing.T, aliases ...string) (env []string, pointAt []string) {
	t.Helper()
	kms := localkms.Start(t)
	for _, a := range aliases {
		kms.CreateKey(t, a)
	}
	return []string{"AWS_ACCESS_KEY_ID=AKIDLOCALKMS", "AWS_SECRET_ACCESS_KEY=local-kms-secret", "AWS_EC2_METADATA_DISABLED=true"},
		[]string{"&region=" + localkms.Region, "&region=" + localkms.Region + "&endpoint=" + url.QueryEscape(kms.URL)}
}

// runNewKMSKey: the runbook's move to a different KMS key, against
// local-kms: both keys check, the new one active, the old decrypt-only.
func runNewKMSKey(t *testing.T, s *sandbox, b Block) {
	env, point := awsEnv(t, "keybroker-2027", "keybroker-2026")
	out := kekCheck(t, s, rewrite(t, b.Body, point...), env...)
	require.Regexp(t, `aws-2027\s+active\s+ok`, out)
	require.Regexp(t, `aws-2026\s+decrypt-only\s+ok`, out)
}

// runEnvIntoKMS: the runbook's move from the original service's KEK into
// a KMS key, against local-kms and a store of the original's rows: both
// check, and the re-wrap job moves every row under the KMS key.
func runEnvIntoKMS(t *testing.T, s *sandbox, b Block) {
	env, point := awsEnv(t, "keybroker")
	env = append(env, rotationEnv(t, s)...)
	out := s.run(t, "", "set -a\n"+rewrite(t, b.Body, point...)+"\nset +a\nkeybroker kek check\nkeybroker rewrap\nkeybroker kek status", env...)
	require.Regexp(t, `aws-2027\s+active\s+ok`, out)
	require.Regexp(t, `env-v1\s+decrypt-only\s+ok`, out)
	require.Regexp(t, `env-v1\s+-\s+0\s+.*no rows left, it can be removed`, out, "the job moved every row off the env KEK")
}
