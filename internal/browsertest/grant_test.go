package browsertest_test

import (
	"encoding/base64"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/grant"
	"github.com/keybroker/keybroker/grant/worker"
	"github.com/keybroker/keybroker/internal/testkit/apitest"
	"github.com/keybroker/keybroker/internal/testkit/testvectors"
	"github.com/keybroker/keybroker/vaultapi"
)

// TestMissionGrantInBrowser: a page on another origin asks keybroker for
// mission grants with the SDK — to a post-quantum worker by name and to
// the default (upstream) worker — and encrypts a record under the
// mission key Chromium's WebCrypto derives from the master key. Each
// worker, given only the grant JSON the page received and its private
// key, opens its grant and decrypts the record; the master key never
// left the page except to the SDK's derivation.
func TestMissionGrantInBrowser(t *testing.T) {
	t.Parallel()
	vectors := testvectors.LoadGrant(t)
	pq, err := grant.GenerateKey(grant.HPKEMLKEM768X25519)
	require.NoError(t, err)
	pqRecipient, err := pq.Recipient("missions")
	require.NoError(t, err)
	def, err := grant.ParseRecipient(grant.DefaultRecipient, []byte(vectors.RSAOAEP.PublicKeyPEM))
	require.NoError(t, err)
	recipients, err := grant.NewRecipients(def, pqRecipient)
	require.NoError(t, err)

	page := pageServer(t, builtSDK(t))
	kb := startKeybroker(t, page.URL, apitest.Options{Broker: func(cfg *broker.Config) { cfg.GrantRecipients = recipients }})
	tab := openTab(t, page.URL+"/index.html", true, nil)
	const plaintext = "notes for the weekly review"
	var out struct {
		Named            string     `json:"named"`
		Upstream         string     `json:"upstream"`
		Key              keyFacts   `json:"key"`
		Sealed           sealed     `json:"sealed"`
		UnknownRecipient *pageError `json:"unknownRecipient"`
		BadScope         *pageError `json:"badScope"`
	}
	tab.call(t, "/story.js", "missionGrant", map[string]any{
		"api": kb.URL, "token": mint(t, kb.Issuer, "alice"), "missionId": "weekly-review",
		"tables": []string{"tasks", "notes"}, "recordIds": []string{"tasks:t-42", "notes:n-7"},
		"recipient": "missions", "recordId": "notes:n-7", "plaintext": plaintext,
	}, &out)

	require.False(t, out.Key.Extractable, "the mission key is as unreadable to the page as the master key")
	require.Equal(t, map[string]any{"name": "AES-GCM", "length": float64(256)}, out.Key.Algorithm)
	requirePageError(t, out.UnknownRecipient, "BadRequestError", vaultapi.CodeGrantRecipientUnknown, http.StatusBadRequest)
	requirePageError(t, out.BadScope, "BadRequestError", vaultapi.CodeBadRequest, http.StatusBadRequest)
	require.Contains(t, out.BadScope.Message, `names table "journal"`)

	iv, err := base64.StdEncoding.DecodeString(out.Sealed.IV)
	require.NoError(t, err)
	ct, err := base64.StdEncoding.DecodeString(out.Sealed.CT)
	require.NoError(t, err)
	for name, c := range map[string]struct {
		json   string
		config worker.Config
	}{
		"Named":    {out.Named, worker.Config{Name: "missions", PrivateKeyPEM: mustPEM(t, pq)}},
		"Upstream": {out.Upstream, worker.Config{PrivateKeyPEM: []byte(vectors.RSAOAEP.PrivateKeyPEM)}},
	} {
		t.Run(name, func(t *testing.T) {
			w, err := worker.New(c.config)
			require.NoError(t, err)
			defer w.Close()
			g, err := worker.ParseGrant([]byte(c.json))
			require.NoError(t, err)
			key, err := w.Open(g)
			require.NoError(t, err)
			defer key.Close()
			plain, err := key.Decrypt("notes:n-7", iv, ct, []byte("notes:n-7"))
			require.NoError(t, err, "the worker's key is the mission key the browser derived")
			require.Equal(t, plaintext, string(plain))
			_, err = key.Decrypt("tasks:t-42", iv, ct, []byte("tasks:t-42"))
			require.Error(t, err, "the record id is bound as additional data: presented as another record, it does not open")
		})
	}
	// The grants crossed origins as the vault routes do: preflighted, and
	// the master key was fetched only for the page's own derivation.
	reqs := kb.rec.all()
	requirePreflighted(t, reqs, page.URL)
	grants := 0
	for _, r := range reqs {
		if r.Method == http.MethodPost && r.Path == vaultapi.MissionGrantPath {
			grants++
			require.NotContains(t, r.Body, "masterKey")
		}
	}
	require.Equal(t, 4, grants)
	trail, _ := auditTrail(t, kb.Service, "alice")
	require.Equal(t, "init:201,mission_grant:200,mission_grant:200,fetch:200,mission_grant:400", strings.Join(trail, ","),
		"the two grants, the page's own fetch for missionKey, the refused recipient; the bad scope never reached the domain")
}

func mustPEM(t *testing.T, k *grant.PrivateKey) []byte {
	t.Helper()
	pem, err := k.MarshalPEM()
	require.NoError(t, err)
	return pem
}
