package broker_test

import (
	"bytes"
	"encoding/base64"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/internal/testkit/kmstest/faketransit"
	"github.com/keybroker/keybroker/internal/testkit/kmstest/localkms"
	"github.com/keybroker/keybroker/internal/testkit/pgtest"
	"github.com/keybroker/keybroker/kekproviders/awskms"
	"github.com/keybroker/keybroker/kekproviders/vaulttransit"
)

// The re-wrap job against real KMS peers: local-kms for AWS, the Transit fake for Vault's key versions.

func TestRewrapEnvToAWSKMS(t *testing.T) {
	t.Parallel()
	e := newRewrapEnv(t)
	kms := localkms.Start(t)
	key := kms.CreateKey(t, "keybroker")
	aws, err := awskms.New(t.Context(), awskms.Config{ID: "aws-2026", KeyID: key.Alias, Endpoint: kms.URL,
		Region: localkms.Region, Credentials: localkms.Credentials(), Timeout: 10 * time.Second})
	require.NoError(t, err)
	env := localKEK(t, "env-v1")
	keys := e.seed(t, env, "user", 40, broker.FormatBound)
	for user, mk := range e.seed(t, env, "legacy", 10, broker.FormatLegacy) {
		keys[user] = mk
	}
	ring := keyring(t, aws, env)
	requests := kms.Requests()

	res, err := e.job(t, ring).Run(t.Context())
	require.NoError(t, err)
	require.EqualValues(t, 50, res.Done)
	require.GreaterOrEqual(t, kms.Requests()-requests, int64(100), "each row wrapped by KMS and the wrap checked by KMS")
	e.requireMoved(t, keys, "aws-2026")
	requireKeysOpen(t, e.service(t, keyring(t, aws)), keys)

	// The wraps are bound: KMS refuses one copied into another row.
	rows := e.rows(t)
	pgtest.Exec(t, e.admin, `UPDATE keybroker.encryption_vaults SET wrapped_mk = $1 WHERE user_id = 'user-000001'`, *rows["user-000000"].WrappedMK)
	_, err = e.service(t, keyring(t, aws)).Key(t.Context(), "user-000001", broker.RequestMeta{})
	require.ErrorIs(t, err, broker.ErrUnwrapFailed)
}

// TestRewrapVaultTransitKeyVersions rotates the Transit key: rows stay on
// the same KEK id, and the job moves their wraps to the newest key version
// with transit/rewrap — the plaintext never leaves Vault — then, the
// version swept, later runs read no row again until the key moves on.
func TestRewrapVaultTransitKeyVersions(t *testing.T) {
	t.Parallel()
	e := newRewrapEnv(t)
	vault := faketransit.Start(t)
	vault.CreateKey(t, "keybroker", true)
	kek, err := vaulttransit.New(t.Context(), vaulttransit.Config{ID: "transit-1", Key: "keybroker", Address: vault.URL,
		Timeout: 10 * time.Second, Auth: vaulttransit.Auth{Token: vault.Token(faketransit.TokenOptions{})}})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, kek.Close()) })
	keys := e.seed(t, kek, "user", 20, broker.FormatBound)
	e.seedZK(t, "transit-1", "zk", 2)
	ring := keyring(t, kek)
	job := e.job(t, ring, func(c *broker.RewrapConfig) { c.BatchSize = 6 })

	// Nothing to do on version 1.
	res, err := job.Run(t.Context())
	require.NoError(t, err)
	require.Zero(t, res.Done)

	vault.RotateKey(t, "keybroker")
	before := e.rows(t)
	rewraps := vault.Requests("PUT /v1/transit/rewrap/keybroker") + vault.Requests("POST /v1/transit/rewrap/keybroker")
	res, err = job.Run(t.Context())
	require.NoError(t, err)
	require.EqualValues(t, 20, res.Done)
	require.EqualValues(t, 20, res.ServerRewrapped)
	require.Equal(t, rewraps+20, vault.Requests("PUT /v1/transit/rewrap/keybroker")+vault.Requests("POST /v1/transit/rewrap/keybroker"),
		"one transit/rewrap per row")

	after, audits := e.rows(t), e.rewrapAudits(t)
	for user := range keys {
		require.Equal(t, "transit-1", after[user].KEKID, "the KEK id stays")
		require.NotEqual(t, *before[user].WrappedMK, *after[user].WrappedMK)
		raw, err := base64.StdEncoding.DecodeString(*after[user].WrappedMK)
		require.NoError(t, err)
		require.True(t, bytes.HasPrefix(raw, []byte("vault:v2:")), "moved to version 2: %s", raw[:9])
		require.Equal(t, 1, audits[user])
	}
	require.Equal(t, before["zk-000000"], after["zk-000000"])
	requireKeysOpen(t, e.service(t, ring), keys)

	// Version 1 can now be retired in Vault, and every key still opens.
	vault.SetMinDecryptionVersion(t, "keybroker", 2)
	requireKeysOpen(t, e.service(t, ring), keys)

	// Swept: the next run does not read the rows again.
	reads := vault.Requests("GET /v1/transit/keys/keybroker")
	res, err = job.Run(t.Context())
	require.NoError(t, err)
	require.Zero(t, res.Done)
	require.Equal(t, 0, vault.Requests("PUT /v1/transit/rewrap/keybroker")+vault.Requests("POST /v1/transit/rewrap/keybroker")-rewraps-20)
	require.Equal(t, reads+1, vault.Requests("GET /v1/transit/keys/keybroker"), "one key read to learn the version has not moved")
}
