package pgstore_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/internal/pgtest"
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

// TestRewrapStoreAsRuntimeRole drives the re-wrap store methods as a
// runtime role that owns nothing and holds only the grants the docs list.
func TestRewrapStoreAsRuntimeRole(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	const schema = "keybroker"
	e.migrate(t, schema)
	store := e.store(t, schema)
	ctx := t.Context()
	vaults := pgx.Identifier{schema, "encryption_vaults"}.Sanitize()
	for _, row := range []struct {
		user, kek string
		format    int
	}{{"u1", "old", 2}, {"u2", "new", 2}, {"u3", "new", 1}, {"u4", "old", 2}, {"u5", "old", 1}} {
		pgtest.Exec(t, e.admin, "INSERT INTO "+vaults+" (user_id, wrapped_mk, wrap_iv, format_version, kek_id) VALUES ($1, $2, '', $3, $4)",
			row.user, "d3JhcC0"+row.user, row.format, row.kek)
	}
	pgtest.Exec(t, e.admin, "INSERT INTO "+vaults+` (user_id, format_version, kek_id, recovery_wrapped_mk, recovery_iv, zero_knowledge)
VALUES ('u6', 2, 'old', 'cmVj', 'aXY=', true)`)

	t.Run("CandidatesPageInUserOrder", func(t *testing.T) {
		q := broker.RewrapQuery{ActiveKEKID: "new", Limit: 2}
		page, err := store.RewrapCandidates(ctx, q)
		require.NoError(t, err)
		require.Equal(t, []string{"u1", "u3"}, page)
		q.After = page[1]
		page, err = store.RewrapCandidates(ctx, q)
		require.NoError(t, err)
		require.Equal(t, []string{"u4", "u5"}, page, "zero-knowledge u6 is never a candidate")
		q.After = page[1]
		page, err = store.RewrapCandidates(ctx, q)
		require.NoError(t, err)
		require.Empty(t, page)

		onActive, err := store.RewrapCandidates(ctx, broker.RewrapQuery{ActiveKEKID: "new", OnActiveKEK: true, Limit: 10})
		require.NoError(t, err)
		require.Equal(t, []string{"u2"}, onActive)

		legacy, err := store.RewrapCandidates(ctx, broker.RewrapQuery{ActiveKEKID: "new", LegacyOnly: true, Limit: 1})
		require.NoError(t, err)
		require.Equal(t, []string{"u3"}, legacy, "format 1 on the active KEK id too")
		legacy, err = store.RewrapCandidates(ctx, broker.RewrapQuery{ActiveKEKID: "new", LegacyOnly: true, After: "u3", Limit: 10})
		require.NoError(t, err)
		require.Equal(t, []string{"u5"}, legacy)
	})
	t.Run("Counts", func(t *testing.T) {
		counts, err := store.KEKCounts(ctx)
		require.NoError(t, err)
		require.Equal(t, []broker.KEKCount{
			{KEKID: "new", FormatVersion: 1, Wrapped: true, Rows: 1},
			{KEKID: "new", FormatVersion: 2, Wrapped: true, Rows: 1},
			{KEKID: "old", FormatVersion: 1, Wrapped: true, Rows: 1},
			{KEKID: "old", FormatVersion: 2, Wrapped: false, ZeroKnowledge: true, Rows: 1},
			{KEKID: "old", FormatVersion: 2, Wrapped: true, Rows: 2},
		}, counts)
	})
	t.Run("ReadAndCompareAndSwap", func(t *testing.T) {
		read, err := store.RewrapRead(ctx, []string{"u1", "u4", "nobody"})
		require.NoError(t, err)
		require.Len(t, read, 2)
		byUser := map[string]*broker.Vault{}
		for _, v := range read {
			byUser[v.UserID] = v
		}
		// A user request changes u4's wrap after the read.
		pgtest.Exec(t, e.admin, "UPDATE "+vaults+" SET wrapped_mk = 'cm90YXRlZA==', kek_id = 'new' WHERE user_id = 'u4'")

		swap := func(v *broker.Vault) broker.RewrapSwap {
			next := *v
			wrapped, empty, check := "bmV3LXdyYXA=", "", "Y2hlY2s="
			next.WrappedMK, next.WrapIV, next.KEKID, next.KeyCheck = &wrapped, &empty, "new", &check
			return broker.RewrapSwap{Old: v, New: &next, Audit: &broker.AuditEntry{ID: "rewrap-" + v.UserID, UserID: v.UserID,
				Action: broker.ActionKEKRewrap, Context: "old/2>new/2", Status: 200, CreatedAt: time.Now()}}
		}
		applied, err := store.RewrapApply(ctx, []broker.RewrapSwap{swap(byUser["u1"]), swap(byUser["u4"])})
		require.NoError(t, err)
		require.Equal(t, []bool{true, false}, applied)

		var wrapped, kek, check string
		require.NoError(t, e.admin.QueryRow(ctx, "SELECT wrapped_mk, kek_id, key_check FROM "+vaults+" WHERE user_id = 'u1'").Scan(&wrapped, &kek, &check))
		require.Equal(t, []string{"bmV3LXdyYXA=", "new", "Y2hlY2s="}, []string{wrapped, kek, check})
		require.NoError(t, e.admin.QueryRow(ctx, "SELECT wrapped_mk FROM "+vaults+" WHERE user_id = 'u4'").Scan(&wrapped))
		require.Equal(t, "cm90YXRlZA==", wrapped, "the user's change wins")
		audit := auditRows(e.admin, schema)
		rows, err := audit(ctx, "u1")
		require.NoError(t, err)
		require.Len(t, rows, 1)
		require.Equal(t, broker.ActionKEKRewrap, rows[0].Action)
		require.Equal(t, "old/2>new/2", rows[0].Context)
		rows, err = audit(ctx, "u4")
		require.NoError(t, err)
		require.Empty(t, rows, "no audit row for a swap that missed")

		// The index followed, in the same transactions.
		counts, err := store.KEKCounts(ctx)
		require.NoError(t, err)
		var onOld int64
		for _, c := range counts {
			if c.KEKID == "old" && c.Wrapped {
				onOld += c.Rows
			}
		}
		require.EqualValues(t, 1, onOld, "only u5 is left on the old KEK")
	})
	t.Run("BatchesNeedDistinctUsers", func(t *testing.T) {
		_, err := store.RewrapRead(ctx, []string{"u1", "u1"})
		require.ErrorIs(t, err, broker.ErrInvalidArgument)
		_, err = store.RewrapRead(ctx, []string{""})
		require.ErrorIs(t, err, broker.ErrInvalidArgument)
	})
}

// TestRewrapLock takes the job's lock as two replicas would.
func TestRewrapLock(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.migrate(t, "keybroker")
	store := e.store(t, "keybroker")
	ctx := t.Context()

	state, err := store.RewrapState(ctx)
	require.NoError(t, err)
	require.Equal(t, broker.RewrapState{}, *state, "never ran")

	lease, err := store.RewrapLock(ctx, "replica-a")
	require.NoError(t, err)
	_, err = store.RewrapLock(ctx, "replica-b")
	require.ErrorIs(t, err, broker.ErrRewrapBusy)

	started := time.Now().UTC().Truncate(time.Microsecond)
	require.NoError(t, lease.Report(ctx, broker.RewrapProgress{ActiveKEKID: "new", Total: 10, Done: 4, StartedAt: started,
		UpdatedAt: started.Add(time.Second), RowsPerSecond: 4}))
	state, err = store.RewrapState(ctx)
	require.NoError(t, err)
	require.True(t, state.Running)
	require.Equal(t, "replica-a", state.Runner)
	require.EqualValues(t, 10, state.Total)
	require.EqualValues(t, 4, state.Done)
	require.InDelta(t, 4, state.RowsPerSecond, 0.001)
	require.False(t, state.Finished)

	// A schema of its own has a lock of its own.
	e.migrate(t, "other")
	otherLease, err := e.store(t, "other").RewrapLock(ctx, "other")
	require.NoError(t, err)
	require.NoError(t, otherLease.Release(ctx, broker.RewrapProgress{}))

	// The holder's connection dies: the lock goes with it.
	pgtest.Exec(t, e.admin, `SELECT pg_terminate_backend(pid, 5000) FROM pg_locks
WHERE locktype = 'advisory' AND granted AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`)
	require.Error(t, lease.Held(ctx))
	state, err = store.RewrapState(ctx)
	require.NoError(t, err)
	require.False(t, state.Running)

	next, err := store.RewrapLock(ctx, "replica-b")
	require.NoError(t, err)
	require.NoError(t, next.Held(ctx))
	require.NoError(t, next.Release(ctx, broker.RewrapProgress{ActiveKEKID: "new", Total: 10, Done: 10, Finished: true,
		StartedAt: started, UpdatedAt: started.Add(2 * time.Second)}))
	state, err = store.RewrapState(ctx)
	require.NoError(t, err)
	require.False(t, state.Running)
	require.True(t, state.Finished)
	require.Equal(t, "replica-b", state.Runner)
	require.Error(t, next.Held(ctx), "a released lease is not held")
	again, err := store.RewrapLock(ctx, "replica-a")
	require.NoError(t, err, "released explicitly, the lock is free at once")
	require.NoError(t, again.Release(ctx, broker.RewrapProgress{}))
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
