package main

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/grant"
	"github.com/keybroker/keybroker/internal/testkit/testvectors"
	"github.com/keybroker/keybroker/vaultapi"
)

func spkiPEM(t *testing.T, pub any) string {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	require.NoError(t, err)
	return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
}

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	require.NoError(t, os.WriteFile(path, []byte(content), 0o644))
	return path
}

// TestServeRefusesAMalformedGrantRecipient: a recipient key that is
// missing, malformed, too weak, unusable, of the wrong kind for the
// default recipient, or named twice stops serve before it touches the
// database, with a message naming the variable (and the entry).
func TestServeRefusesAMalformedGrantRecipient(t *testing.T) {
	var kek bytes.Buffer
	require.NoError(t, run(context.Background(), []string{"kek", "generate"}, envFunc(nil), &kek, io.Discard, nil))
	base := map[string]string{
		"DATABASE_URL":           "postgres://postgres@127.0.0.1:1/none?sslmode=disable&connect_timeout=1",
		"MANA_AUTH_KEK":          strings.TrimSpace(kek.String()),
		"KEYBROKER_JWKS_URL":     "http://127.0.0.1:1/jwks",
		"KEYBROKER_JWT_ISSUER":   "https://auth.test",
		"KEYBROKER_JWT_AUDIENCE": "https://auth.test",
	}
	dir := t.TempDir()
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	require.NoError(t, err)
	x, err := ecdh.X25519().GenerateKey(rand.Reader)
	require.NoError(t, err)
	lowOrder, err := ecdh.X25519().NewPublicKey(make([]byte, 32))
	require.NoError(t, err)
	upstream := testvectors.LoadGrant(t).RSAOAEP.PublicKeyPEM
	xFile := writeFile(t, dir, "x.pem", spkiPEM(t, x.PublicKey()))
	for name, c := range map[string]struct {
		env  map[string]string
		want []string
	}{
		"Garbage":          {map[string]string{"MANA_AI_PUBLIC_KEY_PEM": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"}, []string{"$MANA_AI_PUBLIC_KEY_PEM", "not an SPKI"}},
		"NotPEM":           {map[string]string{"MANA_AI_PUBLIC_KEY_PEM": "ssh-rsa AAAAB3Nza"}, []string{"$MANA_AI_PUBLIC_KEY_PEM", "no PEM block"}},
		"SmallRSA":         {map[string]string{"MANA_AI_PUBLIC_KEY_PEM": spkiPEM(t, &small.PublicKey)}, []string{"$MANA_AI_PUBLIC_KEY_PEM", "1024 bits"}},
		"DefaultNotRSA":    {map[string]string{"MANA_AI_PUBLIC_KEY_PEM": spkiPEM(t, x.PublicKey())}, []string{"$MANA_AI_PUBLIC_KEY_PEM", "RSA"}},
		"EntryWithoutPath": {map[string]string{"KEYBROKER_GRANT_RECIPIENTS": "pq"}, []string{"$KEYBROKER_GRANT_RECIPIENTS", "name=/path"}},
		"MissingFile":      {map[string]string{"KEYBROKER_GRANT_RECIPIENTS": "pq=" + filepath.Join(dir, "nope.pem")}, []string{"$KEYBROKER_GRANT_RECIPIENTS entry pq", "no such file"}},
		"LowOrderX25519":   {map[string]string{"KEYBROKER_GRANT_RECIPIENTS": "bad=" + writeFile(t, dir, "low.pem", spkiPEM(t, lowOrder))}, []string{"entry bad", "trial wrap failed"}},
		"BadName":          {map[string]string{"KEYBROKER_GRANT_RECIPIENTS": "Worker_1=" + xFile}, []string{"recipient name"}},
		"TwiceTheDefault":  {map[string]string{"MANA_AI_PUBLIC_KEY_PEM": upstream, "KEYBROKER_GRANT_RECIPIENTS": "default=" + writeFile(t, dir, "up.pem", upstream)}, []string{"configured twice"}},
		"SameNameTwice":    {map[string]string{"KEYBROKER_GRANT_RECIPIENTS": "w=" + xFile + ",w=" + xFile}, []string{"w is configured twice"}},
	} {
		t.Run(name, func(t *testing.T) {
			env := map[string]string{}
			for k, v := range base {
				env[k] = v
			}
			for k, v := range c.env {
				env[k] = v
			}
			err := run(context.Background(), []string{"serve"}, envFunc(env), io.Discard, &syncBuffer{}, nil)
			require.Error(t, err)
			for _, want := range c.want {
				require.Contains(t, err.Error(), want)
			}
		})
	}
	t.Run("GoodKeysGetPastTheCheck", func(t *testing.T) {
		env := map[string]string{"MANA_AI_PUBLIC_KEY_PEM": strings.ReplaceAll(upstream, "\n", `\n`), "KEYBROKER_GRANT_RECIPIENTS": "x=" + xFile}
		for k, v := range base {
			env[k] = v
		}
		err := run(context.Background(), []string{"serve"}, envFunc(env), io.Discard, &syncBuffer{}, nil)
		require.Error(t, err, "the database is not there")
		require.NotContains(t, err.Error(), "recipient")
	})
}

// TestServeIssuesGrantsAndCountsThem runs serve with the upstream's
// MANA_AI_PUBLIC_KEY_PEM (written on one line, as env files do) and a
// post-quantum recipient from KEYBROKER_GRANT_RECIPIENTS: grants of both
// open with their workers' keys, and the metrics count them by
// recipient and the refusals by reason.
func TestServeIssuesGrantsAndCountsThem(t *testing.T) {
	vectors := testvectors.LoadGrant(t)
	dir := t.TempDir()
	var out bytes.Buffer
	privPath := filepath.Join(dir, "pq.key")
	require.NoError(t, run(context.Background(), []string{"grant", "keygen", "--algorithm", "hpke-mlkem768-x25519", "--private-key", privPath}, envFunc(nil), &out, io.Discard, nil))
	pubPath := writeFile(t, dir, "pq.pem", out.String())
	s := startOpsServe(t, map[string]string{
		"MANA_AI_PUBLIC_KEY_PEM":     strings.ReplaceAll(vectors.RSAOAEP.PublicKeyPEM, "\n", `\n`),
		"KEYBROKER_GRANT_RECIPIENTS": "pq=" + pubPath,
	})
	base := "http://" + s.addr
	post := func(user, path, body string) (int, map[string]any) {
		req, err := http.NewRequest(http.MethodPost, base+path, strings.NewReader(body))
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer "+s.token(t, user))
		res, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer res.Body.Close()
		var m map[string]any
		require.NoError(t, json.NewDecoder(res.Body).Decode(&m))
		return res.StatusCode, m
	}
	status, _ := post("alice", vaultapi.BasePath+"/init", "")
	require.Equal(t, http.StatusOK, status)
	scope := `"missionId":"m","tables":["notes"],"recordIds":["notes:1"]`
	status, upstreamGrant := post("alice", vaultapi.MissionGrantPath, "{"+scope+"}")
	require.Equal(t, http.StatusOK, status, "%v", upstreamGrant)
	status, pqGrant := post("alice", vaultapi.MissionGrantPath, `{`+scope+`,"recipient":"pq"}`)
	require.Equal(t, http.StatusOK, status, "%v", pqGrant)
	require.Equal(t, "hpke-mlkem768-x25519", pqGrant["algorithm"])
	status, _ = post("alice", vaultapi.MissionGrantPath, `{`+scope+`,"recipient":"other"}`)
	require.Equal(t, http.StatusBadRequest, status)
	status, _ = post("bob", vaultapi.MissionGrantPath, "{"+scope+"}")
	require.Equal(t, http.StatusNotFound, status)

	upstreamKey, err := grant.ParsePrivateKey([]byte(vectors.RSAOAEP.PrivateKeyPEM))
	require.NoError(t, err)
	wrapped := mustB64(t, upstreamGrant["wrappedKey"].(string))
	_, err = upstreamKey.UnwrapUnbound(wrapped)
	require.NoError(t, err, "the upstream's worker opens the unnamed grant")
	privPEM, err := os.ReadFile(privPath)
	require.NoError(t, err)
	pqKey, err := grant.ParsePrivateKey(privPEM)
	require.NoError(t, err)
	d, err := grant.NewDerivation("m", []string{"notes"}, []string{"notes:1"})
	require.NoError(t, err)
	terms := grant.Terms{Derivation: d, IssuedAt: mustTime(t, pqGrant["issuedAt"]), ExpiresAt: mustTime(t, pqGrant["expiresAt"])}
	_, err = pqKey.Unwrap(mustB64(t, pqGrant["wrappedKey"].(string)), "pq", terms)
	require.NoError(t, err, "the keygen'd worker opens its grant")

	code, _, metrics := call(t, http.MethodGet, base+"/metrics", nil)
	require.Equal(t, http.StatusOK, code)
	text := string(metrics)
	for _, line := range []string{
		`keybroker_grants_issued_total{algorithm="rsa-oaep-256",recipient="default"} 1`,
		`keybroker_grants_issued_total{algorithm="hpke-mlkem768-x25519",recipient="pq"} 1`,
		`keybroker_grants_refused_total{reason="unknown_recipient"} 1`,
		`keybroker_grants_refused_total{reason="vault_not_initialised"} 1`,
		`keybroker_grants_refused_total{reason="zero_knowledge"} 0`,
	} {
		require.Contains(t, text, line)
	}
	logs := s.logs.String()
	require.Contains(t, logs, `"msg":"mission grant recipient","recipient":"pq","algorithm":"hpke-mlkem768-x25519","fingerprint":"sha256:`)
	for _, secret := range []string{upstreamGrant["wrappedKey"].(string), pqGrant["wrappedKey"].(string)} {
		require.NotContains(t, logs, secret)
	}
}

// TestGrantKeygenAndCheck: keygen makes each kind of key pair with the
// private key in a 0600 file it never overwrites; check reports each
// configured recipient with its fingerprint, and fails on a bad one.
func TestGrantKeygenAndCheck(t *testing.T) {
	dir := t.TempDir()
	var entries []string
	for _, alg := range grant.Algorithms() {
		name := strings.ReplaceAll(string(alg), "-", "")
		priv := filepath.Join(dir, name+".key")
		pub := filepath.Join(dir, name+".pem")
		var out, errOut bytes.Buffer
		require.NoError(t, run(context.Background(), []string{"grant", "keygen", "--algorithm", string(alg), "--private-key", priv, "--public-key", pub}, envFunc(nil), &out, &errOut, nil))
		require.Empty(t, out.String(), "the keys went to files")
		require.Contains(t, errOut.String(), "KEYBROKER_GRANT_RECIPIENTS=NAME="+pub)
		info, err := os.Stat(priv)
		require.NoError(t, err)
		require.Equal(t, os.FileMode(0o600), info.Mode().Perm())
		err = run(context.Background(), []string{"grant", "keygen", "--algorithm", string(alg), "--private-key", priv}, envFunc(nil), &out, io.Discard, nil)
		require.ErrorContains(t, err, "exists", "a key is never overwritten")
		entries = append(entries, name+"="+pub)
	}
	err := run(context.Background(), []string{"grant", "keygen", "--algorithm", "hpke-x25519"}, envFunc(nil), io.Discard, io.Discard, nil)
	require.ErrorContains(t, err, "--private-key is required")
	err = run(context.Background(), []string{"grant", "keygen", "--algorithm", "dsa", "--private-key", filepath.Join(dir, "k")}, envFunc(nil), io.Discard, io.Discard, nil)
	require.ErrorContains(t, err, "unknown algorithm")

	env := map[string]string{"KEYBROKER_GRANT_RECIPIENTS": strings.Join(entries, " "), "MANA_AI_PUBLIC_KEY_PEM": testvectors.LoadGrant(t).RSAOAEP.PublicKeyPEM}
	var out bytes.Buffer
	require.NoError(t, run(context.Background(), []string{"grant", "check"}, envFunc(env), &out, io.Discard, nil))
	require.Regexp(t, `(?m)^default\s+rsa-oaep-256\s+ok\s+sha256:\S{43}\s+\$MANA_AI_PUBLIC_KEY_PEM$`, out.String())
	require.Regexp(t, `(?m)^hpkemlkem768x25519\s+hpke-mlkem768-x25519\s+ok\s+sha256:`, out.String())
	env["KEYBROKER_GRANT_RECIPIENTS"] += " broken=" + writeFile(t, dir, "broken.pem", "not a key")
	out.Reset()
	err = run(context.Background(), []string{"grant", "check"}, envFunc(env), &out, io.Discard, nil)
	require.ErrorContains(t, err, "1 of 5 mission grant recipients failed")
	require.Regexp(t, `(?m)^broken\s+-\s+FAILED\s+-\s+\$KEYBROKER_GRANT_RECIPIENTS entry broken .*no PEM block$`, out.String())
	err = run(context.Background(), []string{"grant", "check"}, envFunc(nil), io.Discard, io.Discard, nil)
	require.ErrorContains(t, err, "no mission grant recipient is configured")
}

func mustB64(t *testing.T, s string) []byte {
	t.Helper()
	b, err := base64.StdEncoding.DecodeString(s)
	require.NoError(t, err)
	return b
}

func mustTime(t *testing.T, v any) time.Time {
	t.Helper()
	tm, err := time.Parse(time.RFC3339Nano, v.(string))
	require.NoError(t, err)
	return tm
}
