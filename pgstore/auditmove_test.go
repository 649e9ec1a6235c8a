package pgstore_test

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/internal/testkit/pgtest"
	"github.com/keybroker/keybroker/pgstore"
)

// previousAuditInsert is the previous release's audit insert, verbatim:
// it names the eight columns it knows.
const previousAuditInsert = `INSERT INTO %s (id, user_id, action, ip_address, user_agent, context, status, created_at)
VALUES ($1, $2, $3, NULLIF($4, ''), NULLIF($5, ''), NULLIF($6, ''), $7, $8)`

// ownerStore is a store on the role that owns schema, the one the upkeep
// needs.
func (e *env) ownerStore(t *testing.T, schema string) *pgstore.Store {
	t.Helper()
	s, err := pgstore.New(t.Context(), pgstore.Config{Pool: e.migratorPool, Schema: schema})
	require.NoError(t, err)
	return s
}

// TestAuditMoveOnlineWhilePreviousReleaseWrites is a rolling upgrade of
// an install with audit rows: the new release's upkeep moves the
// unpartitioned table under a partitioned one while a replica of the
// previous release keeps writing audit rows as the runtime role. No write
// fails, no row is lost, and afterwards the previous release's statement
// still works, row-level security still scopes every read, and no role
// but the owner reads the old table directly.
func TestAuditMoveOnlineWhilePreviousReleaseWrites(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	const schema = "keybroker"
	e.migrate(t, schema)
	ctx := t.Context()
	audit := pgx.Identifier{schema, "encryption_vault_audit"}.Sanitize()
	const seeded = 5000
	pgtest.Exec(t, e.admin, `INSERT INTO `+audit+` (id, user_id, action, status, created_at)
SELECT 'seed-' || g, 'user-' || (g % 10), 'fetch', 200, now() - g * interval '1 minute' FROM generate_series(1, $1) g`, seeded)

	insert := func(i int, at time.Time) error {
		user := fmt.Sprintf("user-%d", i%10)
		return pgx.BeginFunc(ctx, e.runtimePool, func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, "SELECT set_config('app.current_user_id', $1, true)", user); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, fmt.Sprintf(previousAuditInsert, audit), fmt.Sprintf("old-%d", i), user, "fetch", "", "", "", 200, at)
			return err
		})
	}
	moved := make(chan struct{})
	written := make(chan int, 1)
	failed := make(chan error, 1)
	go func() {
		after := 0
		for i := 0; ; i++ {
			if err := insert(i, time.Now()); err != nil {
				failed <- err
				return
			}
			select {
			case <-moved:
				if after++; after == 20 {
					written <- i + 1
					return
				}
			default:
			}
		}
	}()
	res, err := e.ownerStore(t, schema).AuditUpkeep(ctx, broker.AuditUpkeepParams{Now: time.Now(), Runner: "test"})
	require.NoError(t, err)
	require.True(t, res.Moved)
	require.NotEmpty(t, res.Created)
	close(moved)
	var n int
	select {
	case n = <-written:
	case err := <-failed:
		t.Fatalf("the previous release failed to write an audit row: %v", err)
	case <-time.After(time.Minute):
		t.Fatal("the previous release's writer did not finish")
	}

	var kind string
	require.NoError(t, e.admin.QueryRow(ctx, `SELECT relkind::text FROM pg_class WHERE oid = $1::regclass`, audit).Scan(&kind))
	require.Equal(t, "p", kind)
	var total int
	require.NoError(t, e.admin.QueryRow(ctx, `SELECT count(*) FROM `+audit).Scan(&total))
	require.Equal(t, seeded+n, total, "every seeded and every written row is there")

	// The old table is a partition of its own: its rows were not copied.
	var legacy string
	var legacyRows int
	require.NoError(t, e.admin.QueryRow(ctx, `SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = $1::regclass AND pg_get_expr(c.relpartbound, c.oid) LIKE '%MINVALUE%'`, audit).Scan(&legacy))
	require.NoError(t, e.admin.QueryRow(ctx, `SELECT count(*) FROM ONLY `+pgx.Identifier{schema, legacy}.Sanitize()).Scan(&legacyRows))
	require.GreaterOrEqual(t, legacyRows, seeded)

	// The previous release still writes, and sees its user's rows only.
	require.NoError(t, insert(n, time.Now()))
	var own, unscoped int
	scoped(t, e.runtimePool, "user-3", func(tx pgx.Tx) {
		require.NoError(t, tx.QueryRow(ctx, `SELECT count(*) FROM `+audit).Scan(&own))
	})
	var want int
	require.NoError(t, e.admin.QueryRow(ctx, `SELECT count(*) FROM `+audit+` WHERE user_id = 'user-3'`).Scan(&want))
	require.Equal(t, want, own)
	require.Greater(t, own, 0)
	scoped(t, e.runtimePool, "", func(tx pgx.Tx) {
		require.NoError(t, tx.QueryRow(ctx, `SELECT count(*) FROM `+audit).Scan(&unscoped))
	})
	require.Zero(t, unscoped)
	scoped(t, e.runtimePool, "user-3", func(tx pgx.Tx) {
		_, err := tx.Exec(ctx, `SELECT 1 FROM `+pgx.Identifier{schema, legacy}.Sanitize()+` LIMIT 1`)
		var pgErr *pgconn.PgError
		require.True(t, errors.As(err, &pgErr), "%v", err)
		require.Equal(t, "42501", pgErr.Code, "the runtime role may not read a partition directly")
	})
	requireRowLevelSecurity(t, e, schema)

	// The status reads the whole table, through the partitions.
	st, err := e.ownerStore(t, schema).AuditStatus(ctx)
	require.NoError(t, err)
	require.True(t, st.Partitioned)
	require.Equal(t, legacy, st.Partitions[0].Name)
	require.Nil(t, st.Partitions[0].From)
	require.NotNil(t, st.Oldest)
	require.WithinDuration(t, time.Now().Add(-seeded*time.Minute), *st.Oldest, 5*time.Minute)

	// A second pass has nothing to move or create.
	res, err = e.ownerStore(t, schema).AuditUpkeep(ctx, broker.AuditUpkeepParams{Now: time.Now(), Runner: "test"})
	require.NoError(t, err)
	require.False(t, res.Moved)
	require.Empty(t, res.Created)
}

// TestAuditMoveAdoptedManaAuth moves mana-auth's auth.encryption_vault_audit:
// its foreign key to auth.users comes along to the partitioned table, so a
// row naming an unknown user is still refused and deleting a user still
// deletes the user's audit rows, old and new.
func TestAuditMoveAdoptedManaAuth(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := t.Context()
	pgtest.CreateManaAuthSchema(t, e.migratorPool)
	pgtest.Exec(t, e.admin, "INSERT INTO auth.users (id, email) VALUES ('mana-user', 'm@example.com'), ('kept', 'k@example.com')")
	pgtest.Exec(t, e.admin, `INSERT INTO auth.encryption_vault_audit (id, user_id, action, status, created_at)
VALUES ('legacy-1', 'mana-user', 'fetch', 200, '2025-01-02T03:04:05Z'), ('legacy-2', 'kept', 'fetch', 200, '2025-01-02T03:04:05Z')`)
	e.migrate(t, "auth")
	res, err := e.ownerStore(t, "auth").AuditUpkeep(ctx, broker.AuditUpkeepParams{Now: time.Now(), Runner: "test"})
	require.NoError(t, err)
	require.True(t, res.Moved)

	store := e.store(t, "auth")
	for _, at := range []time.Time{time.Now(), time.Now().AddDate(0, 0, 5)} { // the old table, a new partition
		require.NoError(t, store.InUserTx(ctx, "mana-user", func(tx broker.Tx) error {
			return tx.AuditInsert(ctx, &broker.AuditEntry{ID: "new-" + at.Format(time.RFC3339Nano), UserID: "mana-user", Action: broker.ActionFetch, Status: 200, CreatedAt: at})
		}))
	}
	err = store.InUserTx(ctx, "ghost", func(tx broker.Tx) error {
		return tx.AuditInsert(ctx, &broker.AuditEntry{ID: "ghost-1", UserID: "ghost", Action: broker.ActionFetch, Status: 200, CreatedAt: time.Now().AddDate(0, 0, 5)})
	})
	require.ErrorIs(t, err, broker.ErrUnknownUser)

	rowsOf := auditRows(e.admin, "auth")
	rows, err := rowsOf(ctx, "mana-user")
	require.NoError(t, err)
	require.Len(t, rows, 3)
	pgtest.Exec(t, e.admin, "DELETE FROM auth.users WHERE id = 'mana-user'")
	rows, err = rowsOf(ctx, "mana-user")
	require.NoError(t, err)
	require.Empty(t, rows, "ON DELETE CASCADE reaches every partition")
	rows, err = rowsOf(ctx, "kept")
	require.NoError(t, err)
	require.Len(t, rows, 1)
	requireRowLevelSecurity(t, e, "auth")
}

// TestAuditMoveRestartsStaleCutover: a move that stopped after adding its
// CHECK (a crash, a stopped rollout) and is found less than a day before
// its cutover starts again with a later one, before the CHECK could refuse
// the rows of the cutover day.
func TestAuditMoveRestartsStaleCutover(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	const schema = "keybroker"
	e.migrate(t, schema)
	ctx := t.Context()
	audit := pgx.Identifier{schema, "encryption_vault_audit"}.Sanitize()
	pgtest.Exec(t, e.admin, `INSERT INTO `+audit+` (id, user_id, action, status) VALUES ('one', 'u', 'fetch', 200)`)
	stale := time.Now().UTC().Add(2 * time.Hour)
	pgtest.Exec(t, e.migratorPool, `UPDATE `+pgx.Identifier{schema, "encryption_vault_audit_upkeep"}.Sanitize()+` SET cutover = $1`, stale)
	pgtest.Exec(t, e.migratorPool, `ALTER TABLE `+audit+` ADD CONSTRAINT encryption_vault_audit_before_partitions CHECK (created_at < '`+
		stale.Format(time.RFC3339)+`') NOT VALID`)

	now := time.Now()
	res, err := e.ownerStore(t, schema).AuditUpkeep(ctx, broker.AuditUpkeepParams{Now: now, Runner: "test"})
	require.NoError(t, err)
	require.True(t, res.Moved)
	st, err := e.ownerStore(t, schema).AuditStatus(ctx)
	require.NoError(t, err)
	require.Nil(t, st.Partitions[0].From)
	require.True(t, now.UTC().Truncate(24*time.Hour).AddDate(0, 0, 3).Equal(*st.Partitions[0].To), "the bound is a new cutover: %v", st.Partitions[0].To)
	// A row of the old cutover's hour is accepted.
	require.NoError(t, e.store(t, schema).InUserTx(ctx, "u", func(tx broker.Tx) error {
		return tx.AuditInsert(ctx, &broker.AuditEntry{ID: "after-stale", UserID: "u", Action: broker.ActionFetch, Status: 200, CreatedAt: stale.Add(time.Minute)})
	}))
}

// TestAuditMoveEmptyTable: a new install's empty table is moved at once,
// in one transaction, with the day partitions starting today; the moved
// table holds only what is older.
func TestAuditMoveEmptyTable(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.migrate(t, "keybroker")
	now := time.Now()
	res, err := e.ownerStore(t, "keybroker").AuditUpkeep(t.Context(), broker.AuditUpkeepParams{Now: now, Runner: "test"})
	require.NoError(t, err)
	require.True(t, res.Moved)
	today := now.UTC().Truncate(24 * time.Hour)
	require.Equal(t, today.Format("encryption_vault_audit_p20060102"), res.Created[0])
	require.Len(t, res.Created, pgstore.AuditPartitionsAhead)
	st, err := e.ownerStore(t, "keybroker").AuditStatus(t.Context())
	require.NoError(t, err)
	require.Equal(t, today.Format("encryption_vault_audit_before_20060102"), st.Partitions[0].Name)
	require.True(t, today.Equal(*st.Partitions[0].To))
	require.Nil(t, st.Oldest)
	requireRowLevelSecurity(t, e, "keybroker")
}
