package vaultapi_test

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"io"
	"log/slog"
	"net/http"
	"os/exec"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	kbclient "github.com/keybroker/keybroker/client"
	"github.com/keybroker/keybroker/kekproviders/localkek"
	"github.com/keybroker/keybroker/vaultapi"
	"github.com/keybroker/keybroker/vaultapi/jwtauth"
)

// TestZeroKnowledgeSurvivesDatabaseDumpAndKEK plays the thief with a full
// dump of the database, who opens nothing without the KEKs, and then the
// operator (or thief) who holds the dump and every KEK: they try to
// open every wrap-like value of the dump with every KEK, under every
// binding the dump lets them build, and with every data key those opens
// yield. They recover the master keys of standard users — proof that the
// attack works — and never the master key of a zero-knowledge user, whose
// only wrap is the recovery wrap under a code the server never saw. Both
// KEK modes are covered: a local KEK wrapping user keys directly, and
// cached envelope mode, where a data key wrapped by the KEK (here a local
// one standing in for a KMS) wraps them.
//
// The dump is the logical one (pg_dump, or SELECT * of every table when
// pg_dump is missing). Physical files, WAL and backups taken before a user
// switched to zero-knowledge still hold the old server wrap; docs/security.md
// says so.
func TestZeroKnowledgeSurvivesDatabaseDumpAndKEK(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	direct := knownKEK(t, "direct-kek")
	remote := knownKEK(t, "remote-kek")
	e := newEnv(t, envOptions{active: direct})
	quiet := slog.New(slog.NewJSONHandler(io.Discard, nil))
	cached := e.reconfigure(t, envOptions{active: direct, configure: func(cfg *vaultapi.Config, _ *jwtauth.Verifier, store broker.Store) {
		ring, err := broker.LoadKeyring(ctx, broker.KeyringConfig{
			Active: remote, DecryptOnly: []broker.KEK{direct}, Cached: []string{remote.ID()},
			DataKeys:    store,
			NewLocalKEK: func(id string, key []byte) (broker.KEK, error) { return localkek.New(id, key, false) },
			Logger:      quiet,
		})
		require.NoError(t, err)
		svc, err := broker.New(ctx, broker.Config{Store: store, Keyring: ring, Logger: quiet})
		require.NoError(t, err)
		cfg.Service = svc
	}})

	standard := map[string][]byte{}
	zeroKnowledge := map[string][]byte{}
	retired := map[string][]byte{}
	for _, c := range []struct {
		server *env
		user   string
		zk     bool
	}{{e, "std-direct", false}, {cached, "std-cached", false}, {e, "zk-direct", true}, {cached, "zk-cached", true}} {
		// A rotated-away key is gone: no dump may yield it either.
		retired[c.user] = decodeKey(t, c.server.do(http.MethodPost, "/init", c.user, nil))
		mk := decodeKey(t, c.server.do(http.MethodPost, "/rotate", c.user, nil))
		if !c.zk {
			standard[c.user] = mk
			continue
		}
		secret, _ := kbclient.NewRecoveryCode()
		wrapped, iv, err := kbclient.WrapWithRecovery(mk, secret)
		require.NoError(t, err)
		r := c.server.do(http.MethodPost, "/recovery-wrap", c.user, map[string]string{
			"recoveryWrappedMk": base64.StdEncoding.EncodeToString(wrapped), "recoveryIv": base64.StdEncoding.EncodeToString(iv)})
		require.Equal(t, http.StatusOK, r.status, r.raw)
		r = c.server.do(http.MethodPost, "/zero-knowledge", c.user, map[string]any{"enable": true})
		require.Equal(t, http.StatusOK, r.status, r.raw)
		zeroKnowledge[c.user] = mk
	}
	require.True(t, strings.HasPrefix(e.vaultRow("std-cached")["kek_id"].(string), "dk-"), "the cached server wraps under a data key")

	dump := databaseDump(t, ctx, e)
	// Without the KEKs (keys of the same ids, other material) the dump
	// yields nothing at all: a database leak alone is not a key leak.
	require.Empty(t, openEverything(t, ctx, dump, e, []broker.KEK{knownKEK(t, "direct-kek"), knownKEK(t, "remote-kek")}))
	recovered := openEverything(t, ctx, dump, e, []broker.KEK{direct, remote})

	for user, mk := range standard {
		require.True(t, recovered[string(mk)], "the attack harness failed to recover %s's key from the dump: it proves nothing", user)
	}
	for user, mk := range zeroKnowledge {
		require.False(t, recovered[string(mk)], "%s's master key was recovered from a dump and the KEKs", user)
		for _, form := range secretForms(mk) {
			require.NotContains(t, dump, form, "%s's master key is in the dump", user)
		}
		require.False(t, recovered[string(retired[user])], "%s's rotated-away key was recovered", user)
		row := e.vaultRow(user)
		require.Nil(t, row["wrapped_mk"])
		require.Equal(t, true, row["zero_knowledge"])
	}
}

// knownKEK is a local KEK under a random key.
func knownKEK(t *testing.T, id string) broker.KEK {
	t.Helper()
	key := make([]byte, 32)
	rand.Read(key)
	kek, err := localkek.New(id, key, false)
	require.NoError(t, err)
	return kek
}

// databaseDump is a full logical dump of e's database: pg_dump when it is
// installed, and SELECT * of every table in every non-system schema
// either way.
func databaseDump(t *testing.T, ctx context.Context, e *env) string {
	t.Helper()
	var dump strings.Builder
	if pgDump, err := exec.LookPath("pg_dump"); err == nil {
		out, err := exec.CommandContext(ctx, pgDump, "--dbname="+e.admin.Config().ConnString()).Output()
		require.NoError(t, err, "pg_dump")
		dump.Write(out)
	} else {
		t.Log("pg_dump is not installed; the dump is SELECT * of every table")
	}
	rows, err := e.admin.Query(ctx, `SELECT quote_ident(table_schema) || '.' || quote_ident(table_name)
FROM information_schema.tables
WHERE table_type = 'BASE TABLE' AND table_schema NOT IN ('pg_catalog', 'information_schema')`)
	require.NoError(t, err)
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	require.NotEmpty(t, tables)
	for _, table := range tables {
		rows, err := e.admin.Query(ctx, "SELECT row_to_json(t)::text FROM "+table+" t")
		require.NoError(t, err)
		lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
		require.NoError(t, err)
		dump.WriteString(strings.Join(lines, "\n") + "\n")
	}
	return dump.String()
}

var base64ish = regexp.MustCompile(`[A-Za-z0-9+/_-]{16,}={0,2}`)

// openEverything tries every key on every wrap-like value of dump under
// every binding the dump's ids make, feeding each 32-byte plaintext back
// in as a key (a data key opens user wraps), and returns every 32-byte
// plaintext it got.
func openEverything(t *testing.T, ctx context.Context, dump string, e *env, keks []broker.KEK) map[string]bool {
	t.Helper()
	var blobs, ivs [][]byte
	seen := map[string]bool{}
	for _, s := range base64ish.FindAllString(dump, -1) {
		for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.RawStdEncoding, base64.URLEncoding, base64.RawURLEncoding} {
			b, err := enc.DecodeString(s)
			if err != nil || seen[string(b)] {
				continue
			}
			seen[string(b)] = true
			switch {
			case len(b) == broker.LegacyIVSize:
				ivs = append(ivs, b)
			case len(b) >= 28: // nonce + GCM tag at least
				blobs = append(blobs, b)
			}
		}
	}
	// The ids an attacker reads off the dump.
	ids := func(query string) []string {
		rows, err := e.admin.Query(ctx, query)
		require.NoError(t, err)
		out, err := pgx.CollectRows(rows, pgx.RowTo[string])
		require.NoError(t, err)
		return out
	}
	users := ids(`SELECT user_id FROM keybroker.encryption_vaults UNION SELECT user_id FROM keybroker.encryption_vault_audit`)
	kekIDs := ids(`SELECT kek_id FROM keybroker.encryption_vaults UNION SELECT id FROM keybroker.kek_data_keys UNION SELECT wrapped_by FROM keybroker.kek_data_keys`)
	dataKeyIDs := ids(`SELECT id FROM keybroker.kek_data_keys`)
	require.NotEmpty(t, dataKeyIDs, "cached mode made a data key")
	bindings := []map[string]string{nil}
	for _, u := range users {
		for _, k := range kekIDs {
			for _, f := range []int{broker.FormatLegacy, broker.FormatBound} {
				bindings = append(bindings, broker.BindingContext(u, k, f))
			}
		}
	}
	for _, d := range dataKeyIDs {
		for _, k := range kekIDs {
			bindings = append(bindings, broker.DataKeyBinding(d, k))
		}
	}

	recovered := map[string]bool{}
	keys := append([]broker.KEK(nil), keks...)
	for round := 0; round < 4; round++ {
		var fresh []broker.KEK
		for _, key := range keys {
			for _, blob := range blobs {
				candidates := [][]byte{blob}
				for _, iv := range ivs {
					candidates = append(candidates, append(append([]byte(nil), iv...), blob...))
				}
				for _, c := range candidates {
					for _, b := range bindings {
						pt, err := key.Unwrap(ctx, c, b)
						if err != nil || len(pt) != 32 || recovered[string(pt)] {
							continue
						}
						recovered[string(pt)] = true
						k, err := localkek.New("recovered", pt, true)
						require.NoError(t, err)
						fresh = append(fresh, k)
					}
				}
			}
		}
		if len(fresh) == 0 {
			break
		}
		keys = fresh
	}
	return recovered
}
