package pgstore_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/internal/testkit/pgtest"
	"github.com/keybroker/keybroker/migrations"
)

// batchScoped runs fn as the runtime role in a raw transaction scoped to
// the users listed (the re-wrap job's batch scope), then rolls it back.
func batchScoped(t *testing.T, pool *pgxpool.Pool, users []string, fn func(tx pgx.Tx)) {
	t.Helper()
	tx, err := pool.Begin(t.Context())
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(context.WithoutCancel(t.Context())) }()
	_, err = tx.Exec(t.Context(), "SELECT set_config('app.current_user_ids', $1::text[]::text, true)", users)
	require.NoError(t, err)
	fn(tx)
}

// TestBatchScope tries to get around the batch scope with raw SQL: it
// must see and write exactly the users it names, and a connection that
// used it must be back to seeing nothing afterwards.
func TestBatchScope(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	const schema = "keybroker"
	e.migrate(t, schema)
	seedTwoUsers(t, e.admin, schema)
	pgtest.Exec(t, e.admin, "ALTER ROLE "+ident(e.runtime.Name)+" SET search_path TO "+ident(schema))
	cfg, err := pgxpool.ParseConfig(e.runtime.URL)
	require.NoError(t, err)
	cfg.MaxConns = 1 // every transaction below reuses one session
	pool, err := pgxpool.NewWithConfig(t.Context(), cfg)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	ctx := t.Context()

	batchScoped(t, pool, []string{userA, "user-c"}, func(tx pgx.Tx) {
		require.Equal(t, []string{userA}, userIDs(t, tx, "SELECT user_id FROM encryption_vaults"))
		require.Equal(t, []string{userA}, userIDs(t, tx, "SELECT user_id FROM encryption_vault_audit"))
		tag, err := tx.Exec(ctx, "UPDATE encryption_vaults SET kek_id = 'hijacked'")
		require.NoError(t, err)
		require.EqualValues(t, 1, tag.RowsAffected())
		_, err = tx.Exec(ctx, "INSERT INTO encryption_vault_audit (id, user_id, action, status) VALUES ('forged', $1, 'fetch', 200)", userB)
		requirePolicyViolation(t, err)
	})
	batchScoped(t, pool, []string{userA, userB}, func(tx pgx.Tx) {
		require.ElementsMatch(t, []string{userA, userB}, userIDs(t, tx, "SELECT user_id FROM encryption_vaults"))
	})
	// Users whose ids need quoting in an array literal are matched
	// exactly, not split.
	batchScoped(t, pool, []string{`user-a,user-b`, `{user-a}`, `"user-b"`}, func(tx pgx.Tx) {
		require.Empty(t, userIDs(t, tx, "SELECT user_id FROM encryption_vaults"))
	})
	batchScoped(t, pool, []string{}, func(tx pgx.Tx) {
		require.Empty(t, userIDs(t, tx, "SELECT user_id FROM encryption_vaults"))
	})
	// The session used the setting: it now reads as '' and must match
	// nothing — without an error, or every later request would fail.
	scoped(t, pool, "", func(tx pgx.Tx) {
		require.Empty(t, userIDs(t, tx, "SELECT user_id FROM encryption_vaults"))
	})
	scoped(t, pool, userB, func(tx pgx.Tx) {
		require.Equal(t, []string{userB}, userIDs(t, tx, "SELECT user_id FROM encryption_vaults"))
	})
}

// TestRewrapBatchesNeedDistinctUsers: a batch scope names each user once
// (the store contract asks only for non-empty ids).
func TestRewrapBatchesNeedDistinctUsers(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.migrate(t, "keybroker")
	store := e.store(t, "keybroker")
	_, err := store.RewrapRead(t.Context(), []string{"u1", "u1"})
	require.ErrorIs(t, err, broker.ErrInvalidArgument)
	v := &broker.Vault{UserID: "u1", KEKID: "old"}
	audit := func() *broker.AuditEntry {
		return &broker.AuditEntry{ID: randomHex(4), UserID: "u1", Action: broker.ActionKEKRewrap}
	}
	_, err = store.RewrapApply(t.Context(), []broker.RewrapSwap{{Old: v, New: v, Audit: audit()}, {Old: v, New: v, Audit: audit()}})
	require.ErrorIs(t, err, broker.ErrInvalidArgument)
}

// TestRewrapLockDiesWithItsConnection: the job's lock (whose protocol is
// the store contract's) is one per schema, and goes with the connection
// that holds it, so a crashed runner never blocks the next.
func TestRewrapLockDiesWithItsConnection(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.migrate(t, "keybroker")
	store := e.store(t, "keybroker")
	ctx := t.Context()

	lease, err := store.RewrapLock(ctx, "replica-a")
	require.NoError(t, err)
	started := time.Now().UTC().Truncate(time.Microsecond)
	require.NoError(t, lease.Report(ctx, broker.RewrapProgress{ActiveKEKID: "new", Total: 10, Done: 4, StartedAt: started, UpdatedAt: started}))

	// A schema of its own has a lock of its own.
	e.migrate(t, "other")
	otherLease, err := e.store(t, "other").RewrapLock(ctx, "other")
	require.NoError(t, err)
	require.NoError(t, otherLease.Release(ctx, broker.RewrapProgress{}))

	// The holder's connection dies: the lock goes with it.
	pgtest.Exec(t, e.admin, `SELECT pg_terminate_backend(pid, 5000) FROM pg_locks
WHERE locktype = 'advisory' AND granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`)
	require.Error(t, lease.Held(ctx))
	state, err := store.RewrapState(ctx)
	require.NoError(t, err)
	require.False(t, state.Running)
	require.Equal(t, "replica-a", state.Runner, "what the dead runner reported stays")
	require.EqualValues(t, 4, state.Done)

	next, err := store.RewrapLock(ctx, "replica-b")
	require.NoError(t, err)
	require.NoError(t, next.Held(ctx))
	require.NoError(t, next.Release(ctx, broker.RewrapProgress{}))
}

// TestKEKIndexOnAdoptedSchema adopts a mana-auth schema with rows: the
// job's index must list them, so status and the job see the old rows.
func TestKEKIndexOnAdoptedSchema(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := t.Context()
	mana := e.migratorPool
	pgtest.CreateManaAuthSchema(t, mana)
	for _, v := range []broker.Vault{legacyStandard, legacyZK} {
		pgtest.Exec(t, e.admin, "INSERT INTO auth.users (id, email) VALUES ($1, $1 || '@example.com')", v.UserID)
		pgtest.Exec(t, e.admin, `INSERT INTO auth.encryption_vaults
    (user_id, wrapped_mk, wrap_iv, format_version, kek_id, recovery_wrapped_mk, recovery_iv, zero_knowledge)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
			v.UserID, v.WrappedMK, v.WrapIV, v.FormatVersion, v.KEKID, v.RecoveryWrappedMK, v.RecoveryIV, v.ZeroKnowledge)
	}
	_, err := migrations.Apply(ctx, mana, "auth")
	require.NoError(t, err)
	grantRuntime(t, mana, "auth", e.runtime.Name)
	store := e.store(t, "auth")

	counts, err := store.KEKCounts(ctx)
	require.NoError(t, err)
	require.Equal(t, []broker.KEKCount{
		{KEKID: "env-v1", FormatVersion: 1, Wrapped: false, ZeroKnowledge: true, Rows: 1},
		{KEKID: "env-v1", FormatVersion: 1, Wrapped: true, Rows: 1},
	}, counts)
	ids, err := store.RewrapCandidates(ctx, broker.RewrapQuery{ActiveKEKID: "env-v1", Limit: 10})
	require.NoError(t, err)
	require.Equal(t, []string{legacyStandard.UserID}, ids, "the legacy format-1 row is due for an upgrade")

	// Deleting a user cascades to the vault, and to the index.
	pgtest.Exec(t, e.admin, "DELETE FROM auth.users WHERE id = $1", legacyStandard.UserID)
	ids, err = store.RewrapCandidates(ctx, broker.RewrapQuery{ActiveKEKID: "env-v1", Limit: 10})
	require.NoError(t, err)
	require.Empty(t, ids)
}
