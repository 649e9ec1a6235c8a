package client_test

import (
	"crypto/aes"
	"crypto/cipher"
	"encoding/base64"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/client"
	"github.com/keybroker/keybroker/grant"
	"github.com/keybroker/keybroker/grant/worker"
	"github.com/keybroker/keybroker/internal/testkit/apitest"
)

// TestMissionGrantReachesTheWorker: the client asks for a grant to a
// named worker, hands the answer as sent to the worker, and the worker's
// key is the mission key the client derives from the master key.
func TestMissionGrantReachesTheWorker(t *testing.T) {
	t.Parallel()
	priv, err := grant.GenerateKey(grant.HPKEMLKEM768X25519)
	require.NoError(t, err)
	r, err := priv.Recipient("missions")
	require.NoError(t, err)
	rs, err := grant.NewRecipients(r)
	require.NoError(t, err)
	srv := apitest.Start(t, apitest.Options{Broker: func(cfg *broker.Config) { cfg.GrantRecipients = rs }})
	c := (&server{url: srv.URL, issuer: srv.Issuer}).clientFor(t, "alice")

	req := client.MissionGrantRequest{MissionID: "m-1", Tables: []string{"tasks", "notes"}, RecordIDs: []string{"tasks:1", "notes:1"}, TTL: 2 * time.Hour, Recipient: "missions"}
	_, err = c.MissionGrant(t.Context(), req)
	requireAPIError(t, err, http.StatusNotFound, client.ErrVaultNotInitialised)
	key, err := c.Init(t.Context())
	require.NoError(t, err)

	g, err := c.MissionGrant(t.Context(), req)
	require.NoError(t, err)
	require.Equal(t, "missions", g.Recipient)
	require.Equal(t, string(grant.HPKEMLKEM768X25519), g.Algorithm)
	require.Equal(t, []string{"notes", "tasks"}, g.Derivation.Tables)
	require.Equal(t, 2*time.Hour, g.ExpiresAt.Sub(g.IssuedAt))
	mdk, err := client.MissionKey(key.MasterKey, g)
	require.NoError(t, err)

	pem, err := priv.MarshalPEM()
	require.NoError(t, err)
	w, err := worker.New(worker.Config{Name: "missions", PrivateKeyPEM: pem})
	require.NoError(t, err)
	defer w.Close()
	parsed, err := worker.ParseGrant(g.JSON)
	require.NoError(t, err)
	opened, err := w.Open(parsed)
	require.NoError(t, err)
	defer opened.Close()
	require.Equal(t, g.Derivation, opened.Derivation())
	block, err := aes.NewCipher(mdk)
	require.NoError(t, err)
	gcm, err := cipher.NewGCM(block)
	require.NoError(t, err)
	iv := make([]byte, 12)
	record := gcm.Seal(nil, iv, []byte("the browser's record"), nil)
	plain, err := opened.Decrypt("tasks:1", iv, record, nil)
	require.NoError(t, err, "the worker's key is the client's mission key")
	require.Equal(t, "the browser's record", string(plain))

	req.Recipient = "nobody"
	_, err = c.MissionGrant(t.Context(), req)
	requireAPIError(t, err, http.StatusBadRequest, client.ErrGrantRecipientUnknown)
	req.Recipient = ""
	_, err = c.MissionGrant(t.Context(), req)
	requireAPIError(t, err, http.StatusServiceUnavailable, client.ErrGrantNotConfigured)
	req.RecordIDs = []string{"journal:1"}
	_, err = c.MissionGrant(t.Context(), req)
	var apiErr *client.APIError
	require.True(t, errors.As(err, &apiErr))
	require.ErrorIs(t, err, client.ErrBadRequest)
	require.Contains(t, apiErr.Message, `names table "journal"`)
}

// TestMissionKeyIsTheBrowsersDerivation: the client's mission key of a
// WebCrypto vector's scope is the vector's key.
func TestMissionKeyIsTheBrowsersDerivation(t *testing.T) {
	t.Parallel()
	mk := make([]byte, 32)
	for i := range mk {
		mk[i] = byte(i + 1)
	}
	g := &client.MissionGrant{Derivation: grant.Derivation{Version: "v1", MissionID: "mission-abc", Tables: []string{"notes", "tasks"}, RecordIDs: []string{"notes:n1", "tasks:t1"}}}
	mdk, err := client.MissionKey(mk, g)
	require.NoError(t, err)
	require.Equal(t, "dTjfZsUdPdtmfAE1/rSsfCgAujcrq8fmHpQj1qmmVig=", base64.StdEncoding.EncodeToString(mdk))
	g.Derivation.Tables = []string{"tasks", "notes"}
	_, err = client.MissionKey(mk, g)
	require.ErrorContains(t, err, "canonical order", "a derivation not as the server sent it")
}
