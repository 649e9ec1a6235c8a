package broker_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/internal/testkit/pgtest"
	"github.com/keybroker/keybroker/kekproviders/localkek"
	"github.com/keybroker/keybroker/migrations"
	"github.com/keybroker/keybroker/pgstore"
)

// rewrapEnv is a fresh database whose runtime role owns the schema and is
// neither superuser nor BYPASSRLS; admin is the superuser that reads what
// was really written and cuts connections.
type rewrapEnv struct {
	admin *pgxpool.Pool
	role  pgtest.Role
	pool  *pgxpool.Pool
	store *pgstore.Store
}

func newRewrapEnv(t testing.TB) *rewrapEnv {
	t.Helper()
	dbURL := pgtest.NewDatabase(t)
	admin := pgtest.NewPool(t, dbURL)
	role := pgtest.NewRole(t, dbURL)
	var db string
	require.NoError(t, admin.QueryRow(t.Context(), "SELECT current_database()").Scan(&db))
	pgtest.Exec(t, admin, "GRANT CREATE ON DATABASE "+pgx.Identifier{db}.Sanitize()+" TO "+pgx.Identifier{role.Name}.Sanitize())
	pool := pgtest.NewPool(t, role.URL)
	_, err := migrations.Apply(t.Context(), pool, "keybroker")
	require.NoError(t, err)
	store, err := pgstore.New(t.Context(), pgstore.Config{Pool: pool, Schema: "keybroker"})
	require.NoError(t, err)
	return &rewrapEnv{admin: admin, role: role, pool: pool, store: store}
}

func localKEK(t testing.TB, id string) broker.KEK {
	t.Helper()
	key := make([]byte, 32)
	rand.Read(key)
	k, err := localkek.New(id, key, false)
	require.NoError(t, err)
	return k
}

func keyring(t testing.TB, active broker.KEK, retired ...broker.KEK) *broker.Keyring {
	t.Helper()
	ring, err := broker.NewKeyring(active, retired...)
	require.NoError(t, err)
	return ring
}

// seed writes n rows wrapped by kek in format (1: legacy, no AAD, IV in
// its column, no key check value; 2: bound) as the superuser, the way the
// original service or an earlier keybroker left them, and returns each
// user's master key.
func (e *rewrapEnv) seed(t testing.TB, kek broker.KEK, prefix string, n, format int) map[string][]byte {
	t.Helper()
	ctx := t.Context()
	if format == broker.FormatLegacy {
		// A freshly migrated schema starts with format 1 closed: the
		// owner reopens it to import format-1 rows (docs/rotation.md).
		pgtest.ReopenFormat1(t, e.admin, "keybroker")
	}
	keys := make(map[string][]byte, n)
	rows := make([][]any, 0, n)
	for i := range n {
		user := fmt.Sprintf("%s-%06d", prefix, i)
		mk := make([]byte, 32)
		rand.Read(mk)
		keys[user] = mk
		var binding map[string]string
		if format == broker.FormatBound {
			binding = broker.BindingContext(user, kek.ID(), broker.FormatBound)
		}
		wrapped, err := kek.Wrap(ctx, mk, binding)
		require.NoError(t, err)
		wrappedMK, wrapIV, keyCheck := base64.StdEncoding.EncodeToString(wrapped), "", any(broker.KeyCheckValue(mk))
		if format == broker.FormatLegacy {
			wrapIV = base64.StdEncoding.EncodeToString(wrapped[:12])
			wrappedMK = base64.StdEncoding.EncodeToString(wrapped[12:])
			keyCheck = nil
		}
		rows = append(rows, []any{user, wrappedMK, wrapIV, format, kek.ID(), keyCheck})
	}
	_, err := e.admin.CopyFrom(ctx, pgx.Identifier{"keybroker", "encryption_vaults"},
		[]string{"user_id", "wrapped_mk", "wrap_iv", "format_version", "kek_id", "key_check"}, pgx.CopyFromRows(rows))
	require.NoError(t, err)
	return keys
}

// seedZK writes n zero-knowledge rows: recovery wrap only.
func (e *rewrapEnv) seedZK(t testing.TB, kekID, prefix string, n int) {
	t.Helper()
	for i := range n {
		pgtest.Exec(t, e.admin, `INSERT INTO keybroker.encryption_vaults
    (user_id, format_version, kek_id, recovery_wrapped_mk, recovery_iv, zero_knowledge) VALUES ($1, 1, $2, $3, $4, true)`,
			fmt.Sprintf("%s-%06d", prefix, i), kekID, b64(48, byte(i)), b64(12, byte(i)))
	}
}

func b64(n int, fill byte) string {
	return base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{fill}, n))
}

// row is a vault as the superuser reads it.
type row struct {
	WrappedMK, WrapIV, KeyCheck, RecoveryWrappedMK *string
	FormatVersion                                  int
	KEKID                                          string
	ZeroKnowledge                                  bool
}

func (e *rewrapEnv) rows(t *testing.T) map[string]row {
	t.Helper()
	rs, err := e.admin.Query(t.Context(), `SELECT user_id, wrapped_mk, wrap_iv, key_check, recovery_wrapped_mk, format_version, kek_id, zero_knowledge
FROM keybroker.encryption_vaults`)
	require.NoError(t, err)
	out := map[string]row{}
	for rs.Next() {
		var user string
		var r row
		require.NoError(t, rs.Scan(&user, &r.WrappedMK, &r.WrapIV, &r.KeyCheck, &r.RecoveryWrappedMK, &r.FormatVersion, &r.KEKID, &r.ZeroKnowledge))
		out[user] = r
	}
	require.NoError(t, rs.Err())
	return out
}

// rewrapAudits counts kek_rewrap audit rows per user.
func (e *rewrapEnv) rewrapAudits(t *testing.T) map[string]int {
	t.Helper()
	rs, err := e.admin.Query(t.Context(), `SELECT user_id, count(*) FROM keybroker.encryption_vault_audit WHERE action = 'kek_rewrap' GROUP BY 1`)
	require.NoError(t, err)
	out := map[string]int{}
	for rs.Next() {
		var user string
		var n int
		require.NoError(t, rs.Scan(&user, &n))
		out[user] = n
	}
	require.NoError(t, rs.Err())
	return out
}

// terminate cuts every connection of the runtime role, as a failover or a
// killed server would.
func (e *rewrapEnv) terminate() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// With a timeout pg_terminate_backend waits until the backend is gone,
	// its advisory lock with it.
	_, err := e.admin.Exec(ctx, `SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE usename = $1`, e.role.Name)
	return err
}

func (e *rewrapEnv) job(t testing.TB, ring *broker.Keyring, tweak ...func(*broker.RewrapConfig)) *broker.RewrapJob {
	t.Helper()
	cfg := broker.RewrapConfig{Store: e.store, Keyring: ring, BatchSize: 25, Logger: slog.New(slog.DiscardHandler)}
	for _, f := range tweak {
		f(&cfg)
	}
	job, err := broker.NewRewrapJob(cfg)
	require.NoError(t, err)
	return job
}

func (e *rewrapEnv) service(t testing.TB, ring *broker.Keyring) *broker.Service {
	t.Helper()
	svc, err := broker.New(t.Context(), broker.Config{Store: e.store, Keyring: ring})
	require.NoError(t, err)
	return svc
}

// requireKeysOpen fetches every user's key through the service, as a
// client would, and compares it with the key the user had.
func requireKeysOpen(t *testing.T, svc *broker.Service, keys map[string][]byte) {
	t.Helper()
	for user, want := range keys {
		res, err := svc.Key(t.Context(), user, broker.RequestMeta{})
		require.NoError(t, err, user)
		require.Equal(t, want, res.MasterKey, user)
	}
}

// requireMoved checks that every user in keys is on kekID in format 2
// with a key check value of their key and exactly one kek_rewrap audit row.
func (e *rewrapEnv) requireMoved(t *testing.T, keys map[string][]byte, kekID string) {
	t.Helper()
	rows, audits := e.rows(t), e.rewrapAudits(t)
	for user, mk := range keys {
		r := rows[user]
		require.Equal(t, kekID, r.KEKID, user)
		require.Equal(t, broker.FormatBound, r.FormatVersion, user)
		require.Equal(t, "", *r.WrapIV, user)
		require.NotNil(t, r.KeyCheck, user)
		require.Equal(t, broker.KeyCheckValue(mk), *r.KeyCheck, user)
		require.Equal(t, 1, audits[user], "one kek_rewrap audit row for %s", user)
	}
}

func TestRewrapEnvToEnv(t *testing.T) {
	t.Parallel()
	e := newRewrapEnv(t)
	oldKEK, newKEK := localKEK(t, "env-v1"), localKEK(t, "env-v2")
	bound := e.seed(t, oldKEK, "bound", 60, broker.FormatBound)
	legacy := e.seed(t, oldKEK, "legacy", 15, broker.FormatLegacy)
	current := e.seed(t, newKEK, "current", 5, broker.FormatBound)
	e.seedZK(t, "env-v1", "zk", 5)
	before := e.rows(t)

	// Retiring env-v1 now would strand 75 rows: refused, naming them.
	err := broker.CheckKeyringCoversRows(t.Context(), e.store, keyring(t, newKEK))
	var retired *broker.RetiredKEKError
	require.ErrorAs(t, err, &retired)
	require.Equal(t, map[string]int64{"env-v1": 75}, retired.Rows)
	require.Contains(t, err.Error(), `"env-v1" (75 rows)`)

	ring := keyring(t, newKEK, oldKEK)
	var reports []broker.RewrapProgress
	res, err := e.job(t, ring, func(c *broker.RewrapConfig) {
		c.Progress = func(p broker.RewrapProgress) { reports = append(reports, p) }
	}).Run(t.Context())
	require.NoError(t, err)
	require.True(t, res.Finished)
	require.EqualValues(t, 75, res.Total)
	require.EqualValues(t, 75, res.Done)
	require.Zero(t, res.Failed)
	require.Zero(t, res.Skipped)
	require.Greater(t, len(reports), 3, "progress after every batch of 25")
	require.EqualValues(t, 75, reports[len(reports)-1].Done)

	e.requireMoved(t, bound, "env-v2")
	e.requireMoved(t, legacy, "env-v2")
	after := e.rows(t)
	for user := range current {
		require.Equal(t, before[user], after[user], "a row on the active KEK is not touched")
	}
	for i := range 5 {
		user := fmt.Sprintf("zk-%06d", i)
		require.Equal(t, before[user], after[user], "a zero-knowledge row is not touched")
	}
	require.Zero(t, e.rewrapAudits(t)["zk-000000"])

	// Every key opens with the new KEK alone: env-v1 can be retired.
	onlyNew := keyring(t, newKEK)
	require.NoError(t, broker.CheckKeyringCoversRows(t.Context(), e.store, onlyNew))
	svc := e.service(t, onlyNew)
	requireKeysOpen(t, svc, bound)
	requireKeysOpen(t, svc, legacy)
	requireKeysOpen(t, svc, current)

	// A second run finds nothing.
	res, err = e.job(t, ring).Run(t.Context())
	require.NoError(t, err)
	require.Zero(t, res.Total)
	require.Zero(t, res.Done)

	state, err := e.store.RewrapState(t.Context())
	require.NoError(t, err)
	require.False(t, state.Running)
	require.True(t, state.Finished)
	require.Equal(t, "env-v2", state.ActiveKEKID)
}

// TestRewrapUpgradesLegacyRowsInPlace keeps the KEK: format-1 rows of the
// original service become format 2 under the same id.
func TestRewrapUpgradesLegacyRowsInPlace(t *testing.T) {
	t.Parallel()
	e := newRewrapEnv(t)
	kek := localKEK(t, "env-v1")
	legacy := e.seed(t, kek, "legacy", 30, broker.FormatLegacy)
	bound := e.seed(t, kek, "bound", 10, broker.FormatBound)
	before := e.rows(t)
	ring := keyring(t, kek)

	res, err := e.job(t, ring).Run(t.Context())
	require.NoError(t, err)
	require.EqualValues(t, 30, res.Done)
	e.requireMoved(t, legacy, "env-v1")
	after := e.rows(t)
	for user := range bound {
		require.Equal(t, before[user], after[user])
	}
	requireKeysOpen(t, e.service(t, ring), legacy)
}

// legacyVectors are ../testdata/legacy-vectors.json's kek_wrap_v1
// "dev-fallback-zero-kek/1" and "random-kek-1/1", copied here because
// tests run on clean clones without that directory.
var legacyVectors = []struct{ Name, KEK, KEKID, MasterKey, WrapIV, WrappedMK string }{
	{"dev-fallback-zero-kek/1", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "env-v1",
		"NTdG2c+N1jml54IpjLc5M6IYt0IiZdyeG41FIlhlIfQ=", "AgTOklhjA+P+5gB/",
		"4D+P+dStyVxW1bw987WfNxMzK0pqZW+oY11Bh2UZ9y+XUOjg8d6wXRmGtJLnT7jN"},
	{"random-kek-1/1", "atT/K/03UhHdl8u4CeNY/or5Jx/OcDTxpUYYSG8EiKA=", "env-v1",
		"Z4DkwuZ2y6NcePl7xA13aa47q19fCkZ9lxDFO41z5cY=", "B1aBSsDZeR7/AHOV",
		"7GZaLNw6fup7mWMenwxlVkuxWD8vypvapOTe9llCjKLrmDCoUL9qj4uGC5gWmrUQ"},
}

// TestRewrapLegacyVectors moves the original service's known-answer rows
// off the original KEK (the all-zero one included, accepted here as a
// decrypt-only KEK) to a new one.
func TestRewrapLegacyVectors(t *testing.T) {
	t.Parallel()
	for _, v := range legacyVectors {
		t.Run(v.Name, func(t *testing.T) {
			t.Parallel()
			e := newRewrapEnv(t)
			raw, err := base64.StdEncoding.DecodeString(v.KEK)
			require.NoError(t, err)
			old, err := localkek.New(v.KEKID, raw, true)
			require.NoError(t, err)
			pgtest.ReopenFormat1(t, e.admin, "keybroker")
			pgtest.Exec(t, e.admin, `INSERT INTO keybroker.encryption_vaults (user_id, wrapped_mk, wrap_iv, format_version, kek_id)
VALUES ('legacy', $1, $2, 1, $3)`, v.WrappedMK, v.WrapIV, v.KEKID)
			next := localKEK(t, "file-2026")
			ring := keyring(t, next, old)
			res, err := e.job(t, ring).Run(t.Context())
			require.NoError(t, err)
			require.EqualValues(t, 1, res.Done)
			mk, err := base64.StdEncoding.DecodeString(v.MasterKey)
			require.NoError(t, err)
			e.requireMoved(t, map[string][]byte{"legacy": mk}, "file-2026")
			requireKeysOpen(t, e.service(t, keyring(t, next)), map[string][]byte{"legacy": mk})
		})
	}
}

// TestRewrapDryRunWritesNothing reports what would move, and which rows
// would fail, without a write or an audit row.
func TestRewrapDryRunWritesNothing(t *testing.T) {
	t.Parallel()
	e := newRewrapEnv(t)
	old := localKEK(t, "env-v1")
	e.seed(t, old, "user", 30, broker.FormatBound)
	e.seed(t, localKEK(t, "lost"), "lost", 2, broker.FormatBound)
	before := e.rows(t)
	res, err := e.job(t, keyring(t, localKEK(t, "env-v2"), old), func(c *broker.RewrapConfig) { c.DryRun = true }).Run(t.Context())
	require.NoError(t, err)
	require.EqualValues(t, 32, res.Total)
	require.EqualValues(t, 30, res.Done)
	require.EqualValues(t, 2, res.Failed)
	require.Len(t, res.Failures, 2)
	require.ErrorIs(t, res.Failures[0].Err, broker.ErrUnknownKEK)
	require.Equal(t, before, e.rows(t))
	require.Empty(t, e.rewrapAudits(t))
}

// TestRewrapLeavesBrokenRowsAndFinishes has rows that cannot move (an
// unknown KEK id, a corrupt wrap): the job moves the rest, reports them
// and ends — it does not loop on them.
func TestRewrapLeavesBrokenRowsAndFinishes(t *testing.T) {
	t.Parallel()
	e := newRewrapEnv(t)
	old := localKEK(t, "env-v1")
	keys := e.seed(t, old, "user", 40, broker.FormatBound)
	e.seed(t, localKEK(t, "lost"), "lost", 3, broker.FormatBound)
	pgtest.Exec(t, e.admin, `UPDATE keybroker.encryption_vaults SET wrapped_mk = $1 WHERE user_id = 'user-000005'`, b64(60, 7))
	delete(keys, "user-000005")
	ring := keyring(t, localKEK(t, "env-v2"), old)

	res, err := e.job(t, ring).Run(t.Context())
	require.NoError(t, err)
	require.EqualValues(t, 39, res.Done)
	require.EqualValues(t, 4, res.Failed, "each broken row counted once, not once per pass")
	require.Len(t, res.Failures, 4)
	var unknown, unwrap int
	for _, f := range res.Failures {
		switch {
		case errors.Is(f.Err, broker.ErrUnknownKEK):
			unknown++
		case errors.Is(f.Err, broker.ErrUnwrapFailed):
			unwrap++
		}
	}
	require.Equal(t, 3, unknown)
	require.Equal(t, 1, unwrap)
	e.requireMoved(t, keys, "env-v2")
	require.Equal(t, "env-v1", e.rows(t)["user-000005"].KEKID)

	var retired *broker.RetiredKEKError
	require.ErrorAs(t, broker.CheckKeyringCoversRows(t.Context(), e.store, ring), &retired)
	require.Equal(t, map[string]int64{"lost": 3}, retired.Rows)
}

func TestRewrapConfigValidation(t *testing.T) {
	t.Parallel()
	ring := keyring(t, localKEK(t, "a"))
	e := &pgstore.Store{}
	for name, cfg := range map[string]broker.RewrapConfig{
		"NoStore":       {Keyring: ring},
		"NoKeyring":     {Store: e},
		"BatchTooLarge": {Store: e, Keyring: ring, BatchSize: 1 << 20},
		"NegativeRate":  {Store: e, Keyring: ring, RowsPerSecond: -1},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := broker.NewRewrapJob(cfg)
			require.Error(t, err)
		})
	}
}
