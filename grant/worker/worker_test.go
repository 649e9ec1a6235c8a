package worker_test

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/grant"
	"github.com/keybroker/keybroker/grant/worker"
	"github.com/keybroker/keybroker/internal/testkit/apitest"
	"github.com/keybroker/keybroker/internal/testkit/testvectors"
	"github.com/keybroker/keybroker/vaultapi"
)

// recordVectors is testdata/grant-record-vectors.json: records WebCrypto
// encrypted under a vector's mission data key.
type recordVectors struct {
	Of      string `json:"of"`
	Records []struct {
		RecordID       string  `json:"recordId"`
		IV             string  `json:"iv_base64"`
		AdditionalData *string `json:"additional_data"`
		Ciphertext     string  `json:"ciphertext_base64"`
		Plaintext      string  `json:"plaintext"`
	} `json:"records"`
}

func b64(t *testing.T, s string) []byte {
	t.Helper()
	b, err := base64.StdEncoding.DecodeString(s)
	require.NoError(t, err)
	return b
}

// upstreamGrantJSON is a grant as the upstream issued it for vector
// fixed/basic: the WebCrypto RSA-OAEP wrap of its key, in the
// upstream's response shape.
func upstreamGrantJSON(t testing.TB, issued time.Time) []byte {
	t.Helper()
	v := testvectors.LoadGrant(t)
	basic := v.Grant(t, v.RSAOAEP.Of)
	body := map[string]any{
		"wrappedKey": v.RSAOAEP.WrappedMDK,
		"derivation": basic.Derivation,
		"issuedAt":   issued.UTC().Format("2006-01-02T15:04:05.000Z"),
		"expiresAt":  issued.Add(grant.DefaultTTL).UTC().Format("2006-01-02T15:04:05.000Z"),
	}
	raw, err := json.Marshal(body)
	require.NoError(t, err)
	return raw
}

func upstreamWorker(t *testing.T, now func() time.Time) *worker.Worker {
	t.Helper()
	w, err := worker.New(worker.Config{PrivateKeyPEM: []byte(testvectors.LoadGrant(t).RSAOAEP.PrivateKeyPEM), Now: now})
	require.NoError(t, err)
	t.Cleanup(w.Close)
	return w
}

// TestUpstreamGrantOpensWebCryptoRecords is the known answer end to end
// without keybroker's code on the browser's side: a grant whose key
// WebCrypto wrapped, opened with the upstream's test key, decrypts
// records WebCrypto encrypted — with and without additional data — and
// nothing else.
func TestUpstreamGrantOpensWebCryptoRecords(t *testing.T) {
	t.Parallel()
	issued := time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC)
	g, err := worker.ParseGrant(upstreamGrantJSON(t, issued))
	require.NoError(t, err)
	require.Empty(t, g.Recipient, "the upstream's shape names no recipient")
	w := upstreamWorker(t, func() time.Time { return issued.Add(time.Hour) })
	key, err := w.Open(g)
	require.NoError(t, err)
	defer key.Close()

	raw, err := os.ReadFile(filepath.Join(filepath.Dir(testvectors.GrantPath()), "grant-record-vectors.json"))
	require.NoError(t, err)
	var records recordVectors
	require.NoError(t, json.Unmarshal(raw, &records))
	require.Equal(t, "fixed/basic", records.Of)
	require.Len(t, records.Records, 2)
	for _, r := range records.Records {
		var aad []byte
		if r.AdditionalData != nil {
			aad = []byte(*r.AdditionalData)
			_, err := key.Decrypt(r.RecordID, b64(t, r.IV), b64(t, r.Ciphertext), nil)
			require.Error(t, err, "the additional data is part of the record")
		}
		plain, err := key.Decrypt(r.RecordID, b64(t, r.IV), b64(t, r.Ciphertext), aad)
		require.NoError(t, err)
		require.Equal(t, r.Plaintext, string(plain))
	}
	r := records.Records[0]
	_, err = key.Decrypt("notes:n2", b64(t, r.IV), b64(t, r.Ciphertext), nil)
	require.ErrorIs(t, err, worker.ErrOutOfScope, "a record the grant does not list is not decrypted, whatever key it was under")
	tampered := b64(t, r.Ciphertext)
	tampered[0] ^= 1
	_, err = key.Decrypt(r.RecordID, b64(t, r.IV), tampered, nil)
	require.ErrorContains(t, err, "does not open")
	_, err = key.Decrypt(r.RecordID, b64(t, r.IV)[:8], b64(t, r.Ciphertext), nil)
	require.ErrorContains(t, err, "IV")
	key.Close()
	_, err = key.Decrypt(r.RecordID, b64(t, r.IV), b64(t, r.Ciphertext), nil)
	require.ErrorIs(t, err, worker.ErrClosed)
}

// recipientKeys are the workers of the end-to-end test: the upstream's
// RSA key as the default, a post-quantum one and an X25519 one.
type recipientKeys struct {
	pems       map[string][]byte // private key PEM by recipient name
	recipients *grant.Recipients
}

func newRecipientKeys(t *testing.T) *recipientKeys {
	t.Helper()
	k := &recipientKeys{pems: map[string][]byte{grant.DefaultRecipient: []byte(testvectors.LoadGrant(t).RSAOAEP.PrivateKeyPEM)}}
	var list []*grant.Recipient
	for name, alg := range map[string]grant.Algorithm{grant.DefaultRecipient: grant.RSAOAEP256, "pq-worker": grant.HPKEMLKEM768X25519, "x-worker": grant.HPKEX25519} {
		var priv *grant.PrivateKey
		var err error
		if pem, ok := k.pems[name]; ok {
			priv, err = grant.ParsePrivateKey(pem)
		} else {
			priv, err = grant.GenerateKey(alg)
		}
		require.NoError(t, err)
		if k.pems[name] == nil {
			k.pems[name], err = priv.MarshalPEM()
			require.NoError(t, err)
		}
		r, err := priv.Recipient(name)
		require.NoError(t, err)
		list = append(list, r)
	}
	var err error
	k.recipients, err = grant.NewRecipients(list...)
	require.NoError(t, err)
	return k
}

// post sends a JSON request with the user's token and returns the body.
func post(t *testing.T, srv *apitest.Server, path, user string, body any) (int, []byte) {
	t.Helper()
	var rd io.Reader = http.NoBody
	if body != nil {
		raw, err := json.Marshal(body)
		require.NoError(t, err)
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(http.MethodPost, srv.URL+path, rd)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+srv.Token(t, user))
	req.Header.Set("Content-Type", "application/json")
	res, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer res.Body.Close()
	raw, err := io.ReadAll(res.Body)
	require.NoError(t, err)
	return res.StatusCode, raw
}

// browserEncrypt is what the browser does with the mission data key it
// derives from the master key: WebCrypto's AES-GCM with a random 12-byte
// IV, the tag appended, the record id as additional data.
func browserEncrypt(t *testing.T, mk []byte, d grant.Derivation, recordID, plaintext string) (iv, ciphertext []byte) {
	t.Helper()
	mdk, err := grant.DeriveKey(mk, d)
	require.NoError(t, err)
	block, err := aes.NewCipher(mdk)
	require.NoError(t, err)
	gcm, err := cipher.NewGCM(block)
	require.NoError(t, err)
	iv = make([]byte, 12)
	rand.Read(iv)
	return iv, gcm.Seal(nil, iv, []byte(plaintext), []byte(recordID))
}

// TestGrantMintedOverHTTPOpensInTheWorker is the whole path: a real
// server mints grants over HTTP for a user's vault — to the default
// recipient as the upstream did, and to a post-quantum and an X25519
// worker by name — each worker loads its key from a 0600 file, parses
// the response the server sent, opens it, and decrypts a record the
// browser encrypted under the mission data key.
func TestGrantMintedOverHTTPOpensInTheWorker(t *testing.T) {
	t.Parallel()
	keys := newRecipientKeys(t)
	srv := apitest.Start(t, apitest.Options{Broker: func(cfg *broker.Config) { cfg.GrantRecipients = keys.recipients }})
	status, raw := post(t, srv, vaultapi.BasePath+"/init", "alice", nil)
	require.Equal(t, http.StatusOK, status, string(raw))
	var initBody struct {
		MasterKey string `json:"masterKey"`
	}
	require.NoError(t, json.Unmarshal(raw, &initBody))
	mk := b64(t, initBody.MasterKey)

	request := map[string]any{"missionId": "weekly-review", "tables": []string{"notes", "tasks"}, "recordIds": []string{"tasks:t-42", "notes:n-7"}, "ttlMs": 3_600_000}
	scope, err := grant.NewDerivation("weekly-review", []string{"notes", "tasks"}, []string{"tasks:t-42", "notes:n-7"})
	require.NoError(t, err)
	iv, ciphertext := browserEncrypt(t, mk, scope, "notes:n-7", "meeting notes: ship the grant route")

	for _, name := range []string{"", "pq-worker", "x-worker"} {
		t.Run("Recipient="+name, func(t *testing.T) {
			body := map[string]any{}
			for k, v := range request {
				body[k] = v
			}
			if name != "" {
				body["recipient"] = name
			}
			status, grantJSON := post(t, srv, vaultapi.MissionGrantPath, "alice", body)
			require.Equal(t, http.StatusOK, status, string(grantJSON))

			keyFile := filepath.Join(t.TempDir(), "worker.pem")
			require.NoError(t, os.WriteFile(keyFile, keys.pems[cmpOr(name, grant.DefaultRecipient)], 0o600))
			w, err := worker.New(worker.Config{Name: name, PrivateKeyFile: keyFile})
			require.NoError(t, err)
			defer w.Close()

			g, err := worker.ParseGrant(grantJSON)
			require.NoError(t, err)
			require.Equal(t, name, g.Recipient)
			key, err := w.Open(g)
			require.NoError(t, err)
			defer key.Close()
			require.Equal(t, scope, key.Derivation())
			require.WithinDuration(t, time.Now().Add(time.Hour), key.ExpiresAt(), time.Minute)
			plain, err := key.Decrypt("notes:n-7", iv, ciphertext, []byte("notes:n-7"))
			require.NoError(t, err)
			require.Equal(t, "meeting notes: ship the grant route", string(plain))
		})
	}
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// TestWorkerRefusesAlteredAndForeignGrants plays what someone who holds
// a grant in transit or in storage — but not the server's keys — would
// try: stretch its lifetime, widen its scope, hand it to another
// worker, pass a bound grant off as the upstream's or the reverse, or use
// it after it expired. The worker refuses each.
func TestWorkerRefusesAlteredAndForeignGrants(t *testing.T) {
	t.Parallel()
	keys := newRecipientKeys(t)
	srv := apitest.Start(t, apitest.Options{Broker: func(cfg *broker.Config) { cfg.GrantRecipients = keys.recipients }})
	status, raw := post(t, srv, vaultapi.BasePath+"/init", "alice", nil)
	require.Equal(t, http.StatusOK, status, string(raw))
	mint := func(recipient string) map[string]any {
		body := map[string]any{"missionId": "m-1", "tables": []string{"notes"}, "recordIds": []string{"notes:a"}}
		if recipient != "" {
			body["recipient"] = recipient
		}
		status, raw := post(t, srv, vaultapi.MissionGrantPath, "alice", body)
		require.Equal(t, http.StatusOK, status, string(raw))
		var out map[string]any
		require.NoError(t, json.Unmarshal(raw, &out))
		return out
	}
	parse := func(body map[string]any) *worker.Grant {
		raw, err := json.Marshal(body)
		require.NoError(t, err)
		g, err := worker.ParseGrant(raw)
		require.NoError(t, err)
		return g
	}
	workerFor := func(name string, now func() time.Time) *worker.Worker {
		w, err := worker.New(worker.Config{Name: name, PrivateKeyPEM: bytes.Clone(keys.pems[cmpOr(name, grant.DefaultRecipient)]), Now: now})
		require.NoError(t, err)
		t.Cleanup(w.Close)
		return w
	}
	pq := workerFor("pq-worker", nil)
	bound := mint("pq-worker")
	key, err := pq.Open(parse(bound))
	require.NoError(t, err, "the grant as issued opens")
	key.Close()

	t.Run("StretchedLifetime", func(t *testing.T) {
		g := parse(bound)
		g.ExpiresAt = g.ExpiresAt.Add(30 * 24 * time.Hour)
		_, err := pq.Open(g)
		require.ErrorIs(t, err, grant.ErrUnwrap)
	})
	t.Run("WidenedScope", func(t *testing.T) {
		g := parse(bound)
		g.Derivation.RecordIDs = []string{"notes:a", "notes:b"}
		_, err := pq.Open(g)
		require.ErrorIs(t, err, grant.ErrUnwrap)
	})
	t.Run("OtherMission", func(t *testing.T) {
		g := parse(bound)
		g.Derivation.MissionID = "m-2"
		_, err := pq.Open(g)
		require.ErrorIs(t, err, grant.ErrUnwrap)
	})
	t.Run("AnotherWorkersGrant", func(t *testing.T) {
		_, err := workerFor("x-worker", nil).Open(parse(bound))
		require.ErrorIs(t, err, worker.ErrWrongRecipient)
		relabelled := parse(bound)
		relabelled.Recipient, relabelled.Algorithm = "x-worker", grant.HPKEX25519
		_, err = workerFor("x-worker", nil).Open(relabelled)
		require.ErrorIs(t, err, grant.ErrUnwrap, "relabelled, it still does not open with another key")
		_, err = upstreamWorkerFor(t, keys).Open(parse(bound))
		require.ErrorIs(t, err, worker.ErrWrongRecipient)
	})
	t.Run("BoundPassedOffAsUpstream", func(t *testing.T) {
		named := mint(grant.DefaultRecipient) // a bound RSA-OAEP wrap to the default
		delete(named, "recipient")
		delete(named, "algorithm")
		_, err := upstreamWorkerFor(t, keys).Open(parse(named))
		require.ErrorIs(t, err, grant.ErrUnwrap)
	})
	t.Run("UpstreamPassedOffAsBound", func(t *testing.T) {
		upstream := mint("")
		upstream["recipient"], upstream["algorithm"] = grant.DefaultRecipient, string(grant.RSAOAEP256)
		_, err := upstreamWorkerFor(t, keys).Open(parse(upstream))
		require.ErrorIs(t, err, grant.ErrUnwrap)
	})
	t.Run("ExpiredAndFuture", func(t *testing.T) {
		g := parse(bound)
		_, err := workerFor("pq-worker", func() time.Time { return g.ExpiresAt }).Open(g)
		require.ErrorIs(t, err, worker.ErrExpired)
		_, err = workerFor("pq-worker", func() time.Time { return g.IssuedAt.Add(-2 * time.Minute) }).Open(g)
		require.ErrorIs(t, err, worker.ErrNotYetValid)
		_, err = workerFor("pq-worker", func() time.Time { return g.IssuedAt.Add(-30 * time.Second) }).Open(g)
		require.NoError(t, err, "within the clock skew")

		now := g.IssuedAt
		clock := func() time.Time { return now }
		key, err := workerFor("pq-worker", clock).Open(g)
		require.NoError(t, err)
		defer key.Close()
		now = g.ExpiresAt.Add(time.Millisecond)
		_, err = key.Decrypt("notes:a", make([]byte, 12), make([]byte, 32), nil)
		require.ErrorIs(t, err, worker.ErrExpired, "an opened key stops at the grant's expiry too")
	})
	t.Run("ClosedWorker", func(t *testing.T) {
		w := workerFor("pq-worker", nil)
		w.Close()
		_, err := w.Open(parse(bound))
		require.ErrorIs(t, err, worker.ErrClosed)
	})
}

func upstreamWorkerFor(t *testing.T, keys *recipientKeys) *worker.Worker {
	t.Helper()
	w, err := worker.New(worker.Config{PrivateKeyPEM: bytes.Clone(keys.pems[grant.DefaultRecipient])})
	require.NoError(t, err)
	t.Cleanup(w.Close)
	return w
}

// TestParseGrantRefusesWhatItDoesNotUnderstand: an unknown version, an
// unknown field, lists out of canonical order, half a recipient, bad
// base64 or times are refused before any key is touched.
func TestParseGrantRefusesWhatItDoesNotUnderstand(t *testing.T) {
	t.Parallel()
	good := upstreamGrantJSON(t, time.Now())
	_, err := worker.ParseGrant(good)
	require.NoError(t, err)
	edit := func(f func(m map[string]any)) []byte {
		var m map[string]any
		require.NoError(t, json.Unmarshal(good, &m))
		f(m)
		raw, err := json.Marshal(m)
		require.NoError(t, err)
		return raw
	}
	derivation := func(m map[string]any) map[string]any { return m["derivation"].(map[string]any) }
	for name, c := range map[string]struct {
		raw  []byte
		want string
	}{
		"V2":                 {edit(func(m map[string]any) { derivation(m)["version"] = "v2" }), "unknown grant version"},
		"UnknownField":       {edit(func(m map[string]any) { m["masterKey"] = "x" }), "unknown field"},
		"Unsorted":           {edit(func(m map[string]any) { derivation(m)["tables"] = []string{"tasks", "notes"} }), "canonical order"},
		"RecipientAlone":     {edit(func(m map[string]any) { m["recipient"] = "w" }), "both its recipient and its algorithm"},
		"UnknownAlgorithm":   {edit(func(m map[string]any) { m["recipient"], m["algorithm"] = "w", "rsa-pkcs1" }), "unknown algorithm"},
		"NotBase64":          {edit(func(m map[string]any) { m["wrappedKey"] = "***" }), "not base64"},
		"BadTime":            {edit(func(m map[string]any) { m["issuedAt"] = "yesterday" }), "issuedAt"},
		"EndsBeforeItStarts": {edit(func(m map[string]any) { m["expiresAt"] = m["issuedAt"] }), "expires before"},
		"MissingWrappedKey":  {edit(func(m map[string]any) { delete(m, "wrappedKey") }), "required"},
		"TrailingData":       {append(bytes.Clone(good), []byte(` {}`)...), "after the JSON object"},
		"NotJSON":            {[]byte(`wrappedKey=x`), "not a grant"},
	} {
		_, err := worker.ParseGrant(c.raw)
		require.ErrorContains(t, err, c.want, name)
	}
	_, err = worker.ParseGrant(edit(func(m map[string]any) { derivation(m)["version"] = "v2" }))
	require.ErrorIs(t, err, worker.ErrUnknownVersion)
}

// TestWorkerKeyFileMustBePrivate: a key file others may read is refused
// with the chmod that fixes it, and a worker needs exactly one key source.
func TestWorkerKeyFileMustBePrivate(t *testing.T) {
	t.Parallel()
	path := filepath.Join(t.TempDir(), "worker.pem")
	require.NoError(t, os.WriteFile(path, []byte(testvectors.LoadGrant(t).RSAOAEP.PrivateKeyPEM), 0o644))
	_, err := worker.New(worker.Config{PrivateKeyFile: path})
	require.ErrorContains(t, err, "chmod 600 "+path)
	require.NoError(t, os.Chmod(path, 0o600))
	w, err := worker.New(worker.Config{PrivateKeyFile: path})
	require.NoError(t, err)
	w.Close()
	_, err = worker.New(worker.Config{})
	require.ErrorContains(t, err, "PrivateKeyPEM or PrivateKeyFile")
	_, err = worker.New(worker.Config{Name: "Bad Name", PrivateKeyFile: path})
	require.ErrorContains(t, err, "Config.Name")
	require.NoError(t, os.WriteFile(path, []byte(strings.Repeat("x", 100)), 0o600))
	_, err = worker.New(worker.Config{PrivateKeyFile: path})
	require.ErrorContains(t, err, "no PEM block")
}
