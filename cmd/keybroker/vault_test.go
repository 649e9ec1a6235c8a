package main

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/client"
	"github.com/keybroker/keybroker/internal/testkit/pgtest"
	"github.com/keybroker/keybroker/kekproviders/localkek"
	"github.com/keybroker/keybroker/pgstore"
	"github.com/keybroker/keybroker/sqlitestore"
	"github.com/keybroker/keybroker/vaultapi"
)

// TestVaultRestoreRecoveryCommand: a zero-knowledge row adopted from the
// original service loses its only wrap to token-only requests (garbage
// replacements, leaving zero-knowledge mode with a random key, a
// rotation); `keybroker vault restore-recovery` puts the first wrap back
// and the user's recovery code opens their key, on both stores.
func TestVaultRestoreRecoveryCommand(t *testing.T) {
	t.Parallel()
	stores := map[string]func(t *testing.T) (map[string]string, broker.Store){
		"SQLite": func(t *testing.T) (map[string]string, broker.Store) {
			dir := t.TempDir()
			s, err := sqlitestore.Open(t.Context(), sqlitestore.Config{Dir: dir})
			require.NoError(t, err)
			t.Cleanup(func() { _ = s.Close() })
			return map[string]string{"KEYBROKER_DATA_DIR": dir}, s
		},
		"PostgreSQL": func(t *testing.T) (map[string]string, broker.Store) {
			role, _ := pgtest.NewPlainDatabase(t)
			env := map[string]string{"DATABASE_URL": role.URL}
			require.NoError(t, run(t.Context(), []string{"migrate"}, envFunc(env), io.Discard, io.Discard, nil))
			s, err := pgstore.New(t.Context(), pgstore.Config{Pool: pgtest.NewPool(t, env["DATABASE_URL"]), Schema: "keybroker"})
			require.NoError(t, err)
			return env, s
		},
	}
	for name, open := range stores {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ctx := t.Context()
			env, store := open(t)
			kek, err := localkek.New("env-v1", random(32), false)
			require.NoError(t, err)
			ring, err := broker.NewKeyring(kek)
			require.NoError(t, err)
			svc, err := broker.New(ctx, broker.Config{Store: store, Keyring: ring})
			require.NoError(t, err)

			mk := random(32)
			secret, _ := client.NewRecoveryCode()
			wrapped, iv, err := client.WrapWithRecovery(mk, secret)
			require.NoError(t, err)
			set := time.Date(2025, 6, 7, 8, 9, 10, 0, time.UTC)
			wrappedB64, ivB64 := base64.StdEncoding.EncodeToString(wrapped), base64.StdEncoding.EncodeToString(iv)
			require.NoError(t, store.InUserTx(ctx, "adopted", func(tx broker.Tx) error {
				_, err := tx.VaultInsert(ctx, &broker.Vault{UserID: "adopted", FormatVersion: broker.FormatLegacy, KEKID: "env-v1", CreatedAt: set,
					RecoveryWrappedMK: &wrappedB64, RecoveryIV: &ivB64, RecoveryFormatVersion: 1, RecoverySetAt: &set, ZeroKnowledge: true})
				return err
			}))
			meta := broker.RequestMeta{}
			for range 2 {
				require.NoError(t, svc.SetRecoveryWrap(ctx, "adopted", random(48), random(12), nil, meta))
			}
			require.NoError(t, svc.DisableZeroKnowledge(ctx, "adopted", random(32), meta))
			_, err = svc.Rotate(ctx, "adopted", meta)
			require.NoError(t, err)

			var out, errOut bytes.Buffer
			restore := []string{"vault", "restore-recovery", "--user", "adopted"}
			require.NoError(t, run(ctx, restore, envFunc(env), &out, &errOut, nil), errOut.String())
			require.Contains(t, out.String(), `restored the recovery wrap of "adopted" kept at `)
			require.Contains(t, out.String(), "set at 2025-06-07T08:09:10Z")
			require.Contains(t, out.String(), "the server wrap made since was dropped")

			key, err := svc.Key(ctx, "adopted", meta)
			require.NoError(t, err)
			require.True(t, key.RequiresRecoveryCode)
			require.Equal(t, wrappedB64, key.RecoveryWrappedMK)
			opened, err := client.UnwrapWithRecovery(wrapped, iv, secret)
			require.NoError(t, err)
			require.Equal(t, mk, opened)
			page, err := svc.AuditPage(ctx, "adopted", "", 100)
			require.NoError(t, err)
			var restored *broker.AuditEntry
			for i, e := range page.Entries {
				if e.Action == broker.ActionRecoveryRestore {
					restored = &page.Entries[i]
				}
			}
			require.NotNil(t, restored, "the restore is audited")
			require.Contains(t, restored.UserAgent, "keybroker vault restore-recovery")

			err = run(ctx, restore, envFunc(env), io.Discard, io.Discard, nil)
			require.ErrorContains(t, err, "no restorable recovery wrap")
			err = run(ctx, []string{"vault", "restore-recovery", "--user", "nobody"}, envFunc(env), io.Discard, io.Discard, nil)
			require.ErrorContains(t, err, "has no vault")
			require.ErrorContains(t, run(ctx, []string{"vault", "restore-recovery"}, envFunc(env), io.Discard, io.Discard, nil), "--user is required")

			require.NoError(t, svc.SetRecoveryWrap(ctx, "adopted", random(48), random(12), nil, meta))
			out.Reset()
			require.NoError(t, run(ctx, append(restore, "--discard"), envFunc(env), &out, io.Discard, nil))
			require.Contains(t, out.String(), `discarded the recovery wrap of "adopted"`)
			m, err := svc.VaultMeta(ctx, "adopted")
			require.NoError(t, err)
			require.False(t, m.HasRestorableRecoveryWrap)
		})
	}
}

func random(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// TestServeRecoveryProofSetting: $KEYBROKER_RECOVERY_PROOF reaches the
// server. With optional, a replacement without keyProof is accepted and
// the replaced wrap kept; serve says so in its log.
func TestServeRecoveryProofSetting(t *testing.T) {
	t.Parallel()
	const serviceKey = "mana-service-key-0123456789abcdef"
	s := startOpsServe(t, map[string]string{"KEYBROKER_RECOVERY_PROOF": "optional", "MANA_SERVICE_KEY": serviceKey})
	base := "http://" + s.addr
	c, err := client.New(client.Config{BaseURL: base, Token: s.token(t, "opt")})
	require.NoError(t, err)
	ctx := t.Context()
	key, err := c.Init(ctx)
	require.NoError(t, err)
	_, err = c.SetRecoveryCode(ctx, key.MasterKey)
	require.NoError(t, err)
	require.NoError(t, c.EnableZeroKnowledge(ctx))

	body := `{"recoveryWrappedMk":"` + base64.StdEncoding.EncodeToString(random(48)) + `","recoveryIv":"` + base64.StdEncoding.EncodeToString(random(12)) + `"}`
	req, err := http.NewRequest(http.MethodPost, base+client.BasePath+"/recovery-wrap", strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+s.token(t, "opt"))
	req.Header.Set("Content-Type", "application/json")
	res, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	res.Body.Close()
	require.Equal(t, http.StatusOK, res.StatusCode, "optional: accepted without keyProof")
	status, _, export := call(t, http.MethodGet, base+"/api/v1/internal/users/opt/vault", map[string]string{vaultapi.ServiceKeyHeader: serviceKey})
	require.Equal(t, http.StatusOK, status)
	require.Contains(t, string(export), `"hasRestorableRecoveryWrap":true`)
	require.NoError(t, s.stop())
	require.Contains(t, s.logs.String(), "recovery proof optional")
}
