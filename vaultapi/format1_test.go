package vaultapi_test

import (
	"crypto/rand"
	"encoding/base64"
	"log/slog"
	"net/http"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/internal/jwtissuer"
	"github.com/keybroker/keybroker/internal/testkit/pgtest"
	"github.com/keybroker/keybroker/migrations"
	"github.com/keybroker/keybroker/pgstore"
)

// format1Attack is a database that held the original service's rows when
// keybroker first migrated it — the victim's format-1 row among them —
// served by keybroker behind real HTTP, with a second PostgreSQL role that
// may only INSERT and UPDATE vault rows: the original service's leftover
// grant, or anyone with its credentials.
type format1Attack struct {
	*env
	owner  *pgxpool.Pool // keybroker's own role: owns the schema
	writer *pgxpool.Pool // INSERT, UPDATE on encryption_vaults, nothing else
	opts   envOptions
	ring   *broker.Keyring
	victim []byte
	dumpMK string // the victim's wrap as a dump taken before the job ran holds it
	dumpIV string
}

func newFormat1Attack(t *testing.T) *format1Attack {
	t.Helper()
	ctx := t.Context()
	dbURL := pgtest.NewDatabase(t)
	admin := pgtest.NewPool(t, dbURL)
	role := pgtest.NewRole(t, dbURL)
	pgtest.Exec(t, admin, "GRANT CREATE ON DATABASE "+pgx.Identifier{admin.Config().ConnConfig.Database}.Sanitize()+" TO "+pgx.Identifier{role.Name}.Sanitize())
	owner := pgtest.NewPool(t, role.URL)

	// The original service's tables (keybroker's first two migrations
	// are the same statements), and the victim's row as it wrote it.
	all, err := migrations.All()
	require.NoError(t, err)
	pgtest.Exec(t, owner, "CREATE SCHEMA "+schema)
	require.NoError(t, pgx.BeginFunc(ctx, owner, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SET LOCAL search_path TO "+schema); err != nil {
			return err
		}
		for _, m := range all[:2] {
			if _, err := tx.Exec(ctx, m.SQL); err != nil {
				return err
			}
		}
		return nil
	}))
	kek := newKEK(t, "env-v1")
	victim := make([]byte, 32)
	rand.Read(victim)
	wrapped, err := kek.Wrap(ctx, victim, nil) // format 1: no AAD, nonce first
	require.NoError(t, err)
	dumpMK, dumpIV := base64.StdEncoding.EncodeToString(wrapped[12:]), base64.StdEncoding.EncodeToString(wrapped[:12])
	pgtest.Exec(t, admin, `INSERT INTO keybroker.encryption_vaults (user_id, wrapped_mk, wrap_iv, format_version, kek_id)
VALUES ('victim', $1, $2, 1, 'env-v1')`, dumpMK, dumpIV)

	_, err = migrations.Apply(ctx, owner, schema)
	require.NoError(t, err)
	writerRole := pgtest.NewRole(t, dbURL)
	pgtest.Exec(t, owner, "GRANT USAGE ON SCHEMA "+schema+" TO "+pgx.Identifier{writerRole.Name}.Sanitize())
	pgtest.Exec(t, owner, "GRANT INSERT, UPDATE ON "+schema+".encryption_vaults TO "+pgx.Identifier{writerRole.Name}.Sanitize())

	store, err := pgstore.New(ctx, pgstore.Config{Pool: owner, Schema: schema})
	require.NoError(t, err)
	issuer, err := jwtissuer.New("https://auth.test")
	require.NoError(t, err)
	opts := envOptions{active: kek}
	e := (&env{t: t, issuer: issuer, admin: admin, store: store}).withStore(t, store, opts)
	ring, err := broker.NewKeyring(kek)
	require.NoError(t, err)
	return &format1Attack{env: e, owner: owner, writer: pgtest.NewPool(t, writerRole.URL), opts: opts, ring: ring,
		victim: victim, dumpMK: dumpMK, dumpIV: dumpIV}
}

// rewrap runs the re-wrap job once, as a server's background job would.
func (a *format1Attack) rewrap(t *testing.T) *broker.RewrapResult {
	t.Helper()
	job, err := broker.NewRewrapJob(broker.RewrapConfig{Store: a.store, Keyring: a.ring, Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	res, err := job.Run(t.Context())
	require.NoError(t, err)
	return res
}

// asWriter runs sql as the vault-row writer, scoped to user as the
// policies ask (the writer may set any scope).
func (a *format1Attack) asWriter(t *testing.T, user, sql string, args ...any) error {
	t.Helper()
	return pgx.BeginFunc(t.Context(), a.writer, func(tx pgx.Tx) error {
		if _, err := tx.Exec(t.Context(), "SELECT set_config('app.current_user_id', $1, true)", user); err != nil {
			return err
		}
		_, err := tx.Exec(t.Context(), sql, args...)
		return err
	})
}

// paste writes the victim's format-1 wrap from the dump into user's row.
func (a *format1Attack) paste(t *testing.T, user string) {
	t.Helper()
	require.NoError(t, a.asWriter(t, user, `UPDATE keybroker.encryption_vaults
SET wrapped_mk = $1, wrap_iv = $2, format_version = 1, kek_id = 'env-v1', key_check = NULL`, a.dumpMK, a.dumpIV))
}

// requireRefused fetches user's key over HTTP with user's own token: no
// master key, a 500 as for any wrap that does not open, and the audit
// trail says why.
func (a *format1Attack) requireRefused(t *testing.T, e *env, user string) {
	t.Helper()
	r := e.do(http.MethodGet, "/key", user, nil)
	r.requireError(t, http.StatusInternalServerError, "INTERNAL")
	require.NotContains(t, r.raw, base64.StdEncoding.EncodeToString(a.victim))
	var action, note string
	var status int
	require.NoError(t, a.admin.QueryRow(t.Context(), `SELECT action, status, context FROM keybroker.encryption_vault_audit
WHERE user_id = $1 ORDER BY created_at DESC, id LIMIT 1`, user).Scan(&action, &status, &note))
	require.Equal(t, "failed_fetch", action)
	require.Equal(t, http.StatusInternalServerError, status)
	require.True(t, strings.HasPrefix(note, "format1-closed;voids:"), "audit context %q", note)
	require.Contains(t, e.logs.String(), "format 1 is closed")
}

// TestPastedFormat1WrapRefusedOnceClosed is the attack of a vault-row
// writer: after the re-wrap job has upgraded every format-1 row, the
// writer pastes the victim's format-1 wrap, kept from a dump taken before
// the job ran, into their own row and fetches their key over HTTP with
// their own token. No master key; an audited refusal, on the server that
// saw format 1 open and on one that starts afterwards.
func TestPastedFormat1WrapRefusedOnceClosed(t *testing.T) {
	t.Parallel()
	a := newFormat1Attack(t)
	r := a.do(http.MethodGet, "/key", "victim", nil)
	require.Equal(t, http.StatusOK, r.status, r.raw)
	require.Equal(t, base64.StdEncoding.EncodeToString(a.victim), r.body["masterKey"], "format 1 opens while rows need it")
	require.EqualValues(t, 1, r.body["formatVersion"])
	mallory := decodeKey(t, a.do(http.MethodPost, "/init", "mallory", nil))

	res := a.rewrap(t)
	require.EqualValues(t, 1, res.Done, "the victim's row is upgraded")
	require.Equal(t, broker.FormatBound, int(a.vaultRow("victim")["format_version"].(int16)))

	a.paste(t, "mallory")
	a.requireRefused(t, a.env, "mallory")
	a.requireRefused(t, a.env, "mallory")
	a.requireRefused(t, a.reconfigure(t, a.opts), "mallory") // a replica that never saw format 1 open

	// Nor does the job open it: it would re-wrap the victim's key bound
	// to the writer's row. The row fails and stays as pasted.
	res = a.rewrap(t)
	require.EqualValues(t, 1, res.Failed)
	require.Zero(t, res.Done)
	require.Equal(t, int16(broker.FormatLegacy), a.vaultRow("mallory")["format_version"])
	a.requireRefused(t, a.env, "mallory")

	// The victim's key is untouched, and the writer's own is gone only
	// from the row they overwrote.
	require.Equal(t, a.victim, decodeKey(t, a.do(http.MethodGet, "/key", "victim", nil)))
	require.NotEqual(t, a.victim, mallory)
}

// TestVaultRowWriterCannotReopenFormat1: the writer tries every way it has
// to turn format 1 back on — the state table, the closing function, fresh
// format-1 rows — then fetches; and keybroker's own role, which owns the
// table, cannot reopen it through SQL either. Format 1 stays closed and
// every pasted wrap stays refused.
func TestVaultRowWriterCannotReopenFormat1(t *testing.T) {
	t.Parallel()
	a := newFormat1Attack(t)
	ctx := t.Context()
	decodeKey(t, a.do(http.MethodPost, "/init", "mallory", nil))
	a.rewrap(t)

	attempts := []struct{ sql, refusal string }{
		{`UPDATE keybroker.encryption_vault_format1 SET closed_at = NULL, closed_by = NULL`, "permission denied"},
		{`DELETE FROM keybroker.encryption_vault_format1`, "permission denied"},
		{`TRUNCATE keybroker.encryption_vault_format1`, "permission denied"},
		{`INSERT INTO keybroker.encryption_vault_format1 (singleton) VALUES (true)`, "permission denied"},
		{`ALTER TABLE keybroker.encryption_vault_format1 DISABLE TRIGGER encryption_vault_format1_one_way`, "must be owner"},
		{`DROP TABLE keybroker.encryption_vault_format1`, "must be owner"},
	}
	errs := make([]error, len(attempts))
	for i, tc := range attempts {
		errs[i] = a.asWriter(t, "mallory", tc.sql)
	}
	// Fresh format-1 rows: the writer's own, and a new one.
	a.paste(t, "mallory")
	require.NoError(t, a.asWriter(t, "mallory-2", `INSERT INTO keybroker.encryption_vaults (user_id, wrapped_mk, wrap_iv, format_version, kek_id)
VALUES ('mallory-2', $1, $2, 1, 'env-v1')`, a.dumpMK, a.dumpIV))
	a.requireRefused(t, a.env, "mallory")
	a.requireRefused(t, a.reconfigure(t, a.opts), "mallory-2")

	for i, tc := range attempts {
		require.ErrorContains(t, errs[i], tc.refusal, tc.sql)
	}
	state := func() string {
		var at string
		require.NoError(t, a.admin.QueryRow(ctx, `SELECT coalesce(closed_at::text, 'OPEN') FROM keybroker.encryption_vault_format1`).Scan(&at))
		return at
	}
	closedAt := state()
	require.NotEqual(t, "OPEN", closedAt)
	// The closing function is public and harmless: it only closes.
	require.NoError(t, a.asWriter(t, "mallory", `SELECT * FROM keybroker.encryption_vault_format1_close('mallory')`))
	for _, sql := range []string{
		`UPDATE keybroker.encryption_vault_format1 SET closed_at = NULL, closed_by = NULL`,
		`DELETE FROM keybroker.encryption_vault_format1`,
		`TRUNCATE keybroker.encryption_vault_format1`,
		`INSERT INTO keybroker.encryption_vault_format1 (singleton) VALUES (true) ON CONFLICT (singleton) DO UPDATE SET closed_at = NULL, closed_by = NULL`,
	} {
		_, err := a.owner.Exec(ctx, sql)
		require.ErrorContains(t, err, "format 1 is closed for good", sql)
	}
	require.Equal(t, closedAt, state())
	a.requireRefused(t, a.reconfigure(t, a.opts), "mallory")
	require.Equal(t, a.victim, decodeKey(t, a.do(http.MethodGet, "/key", "victim", nil)))
}
