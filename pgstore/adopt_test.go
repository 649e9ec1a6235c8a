package pgstore_test

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/internal/testkit/pgtest"
	"github.com/keybroker/keybroker/migrations"
)

// Rows as mana-auth wrote them. The wraps are ../testdata/legacy-vectors.json's
// kek_wrap_v1 "dev-fallback-zero-kek/1" and recovery_wrap_v1 "recovery/1",
// copied here because tests run on clean clones without that directory.
var (
	legacyCreated  = time.Date(2025, time.January, 2, 3, 4, 5, 678901000, time.UTC)
	legacyRotated  = time.Date(2025, time.February, 3, 4, 5, 6, 0, time.UTC)
	legacyRecovery = time.Date(2025, time.March, 4, 5, 6, 7, 890000, time.UTC)

	legacyStandard = broker.Vault{
		UserID:                "legacy-standard",
		WrappedMK:             ptr("4D+P+dStyVxW1bw987WfNxMzK0pqZW+oY11Bh2UZ9y+XUOjg8d6wXRmGtJLnT7jN"),
		WrapIV:                ptr("AgTOklhjA+P+5gB/"),
		FormatVersion:         1,
		KEKID:                 "env-v1",
		CreatedAt:             legacyCreated,
		RotatedAt:             &legacyRotated,
		RecoveryWrappedMK:     ptr("2x+ioG1zio804d2XwT4vwTlf1TVSKQEQyAXXF3OFV7d3KOVq/0UH0C8ByFs1A/54"),
		RecoveryIV:            ptr("G5Pywr0pgKwlwmt+"),
		RecoveryFormatVersion: 1,
		RecoverySetAt:         &legacyRecovery,
	}
	legacyZK = broker.Vault{
		UserID:                "legacy-zk",
		FormatVersion:         1,
		KEKID:                 "env-v1",
		CreatedAt:             legacyCreated,
		RecoveryWrappedMK:     ptr("2x+ioG1zio804d2XwT4vwTlf1TVSKQEQyAXXF3OFV7d3KOVq/0UH0C8ByFs1A/54"),
		RecoveryIV:            ptr("G5Pywr0pgKwlwmt+"),
		RecoveryFormatVersion: 1,
		RecoverySetAt:         &legacyRecovery,
		ZeroKnowledge:         true,
	}
)

func ptr[T any](v T) *T { return &v }

// TestAdoptManaAuthSchema runs keybroker's migrations on a database where
// mana-auth's 002 and 003 already ran in schema auth, with rows in it.
// Nothing may fail, the rows must read back whole through the Store, and
// the original's foreign keys, constraints and policies must stay.
func TestAdoptManaAuthSchema(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := t.Context()
	// mana-auth's own role (here the migrator: not superuser) created the
	// schema and owns the tables, so it is the one that adopts them.
	mana := e.migratorPool
	pgtest.CreateManaAuthSchema(t, mana)

	for _, u := range []string{legacyStandard.UserID, legacyZK.UserID, "new-user"} {
		pgtest.Exec(t, e.admin, "INSERT INTO auth.users (id, email) VALUES ($1, $1 || '@example.com')", u)
	}
	for _, v := range []broker.Vault{legacyStandard, legacyZK} {
		pgtest.Exec(t, e.admin, `INSERT INTO auth.encryption_vaults
    (user_id, wrapped_mk, wrap_iv, format_version, kek_id, created_at, rotated_at,
     recovery_wrapped_mk, recovery_iv, recovery_format_version, recovery_set_at, zero_knowledge)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)`,
			v.UserID, v.WrappedMK, v.WrapIV, v.FormatVersion, v.KEKID, v.CreatedAt, v.RotatedAt,
			v.RecoveryWrappedMK, v.RecoveryIV, v.RecoveryFormatVersion, v.RecoverySetAt, v.ZeroKnowledge)
	}
	legacyAudit := []broker.AuditEntry{
		{ID: "V1StGXR8_Z5jdHi6B-myT", UserID: legacyStandard.UserID, Action: broker.ActionInit, IPAddress: "198.51.100.4",
			UserAgent: "Mozilla/5.0", Context: "created", Status: 201, CreatedAt: legacyCreated},
		// The original left request metadata NULL when it had none.
		{ID: "3Kd9_zQpLm0aXv7TnW2bR", UserID: legacyStandard.UserID, Action: broker.ActionFetch, Status: 200, CreatedAt: legacyRotated},
	}
	pgtest.Exec(t, e.admin, `INSERT INTO auth.encryption_vault_audit (id, user_id, action, ip_address, user_agent, context, status, created_at)
VALUES ($1, $2, 'init', '198.51.100.4', 'Mozilla/5.0', 'created', 201, $3),
       ($4, $2, 'fetch', NULL, NULL, NULL, 200, $5)`,
		legacyAudit[0].ID, legacyStandard.UserID, legacyCreated, legacyAudit[1].ID, legacyRotated)

	applied, err := migrations.Apply(ctx, mana, "auth")
	require.NoError(t, err)
	all, err := migrations.All()
	require.NoError(t, err)
	require.Len(t, applied, len(all))
	applied, err = migrations.Apply(ctx, mana, "auth")
	require.NoError(t, err)
	require.Empty(t, applied)
	grantRuntime(t, mana, "auth", e.runtime.Name)

	store := e.store(t, "auth")
	t.Run("LegacyRowsReadBackWhole", func(t *testing.T) {
		for _, want := range []broker.Vault{legacyStandard, legacyZK} {
			var got *broker.Vault
			require.NoError(t, store.InUserTx(ctx, want.UserID, func(tx broker.Tx) error {
				got, err = tx.VaultGet(ctx, false)
				return err
			}))
			got.CreatedAt = got.CreatedAt.UTC()
			got.RotatedAt = utc(got.RotatedAt)
			got.RecoverySetAt = utc(got.RecoverySetAt)
			require.Equal(t, want, *got)
			require.Nil(t, got.KeyCheck, "mana-auth wrote no key check value")
		}
	})
	t.Run("LegacyAuditRowsReadBack", func(t *testing.T) {
		rows, err := auditRows(e.admin, "auth")(ctx, legacyStandard.UserID)
		require.NoError(t, err)
		require.Len(t, rows, 2)
		for i := range rows {
			rows[i].CreatedAt = rows[i].CreatedAt.UTC()
		}
		require.Equal(t, legacyAudit, rows)
	})
	t.Run("StoreWritesAdoptedTables", func(t *testing.T) {
		now := time.Now().UTC().Truncate(time.Microsecond)
		require.NoError(t, store.InUserTx(ctx, legacyStandard.UserID, func(tx broker.Tx) error {
			v, err := tx.VaultGet(ctx, true)
			if err != nil {
				return err
			}
			kcv := "a2V5LWNoZWNr"
			v.KeyCheck = &kcv
			if err := tx.VaultUpdate(ctx, v); err != nil {
				return err
			}
			return tx.AuditInsert(ctx, &broker.AuditEntry{ID: "adopted-update", UserID: v.UserID, Action: broker.ActionKEKRewrap, Status: 200, CreatedAt: now})
		}))
		require.NoError(t, store.InUserTx(ctx, "new-user", func(tx broker.Tx) error {
			inserted, err := tx.VaultInsert(ctx, &broker.Vault{UserID: "new-user", WrappedMK: ptr("d3JhcA=="), WrapIV: ptr(""),
				FormatVersion: broker.FormatBound, KEKID: "env-v1", CreatedAt: now, RecoveryFormatVersion: 1})
			if err != nil {
				return err
			}
			require.True(t, inserted)
			return nil
		}))
		var keyCheck string
		require.NoError(t, e.admin.QueryRow(ctx, "SELECT key_check FROM auth.encryption_vaults WHERE user_id = $1", legacyStandard.UserID).Scan(&keyCheck))
		require.Equal(t, "a2V5LWNoZWNr", keyCheck)
	})
	t.Run("ConstraintsKeptByName", func(t *testing.T) {
		pgtest.Exec(t, e.admin, "INSERT INTO auth.users (id, email) VALUES ('user-constraints', 'c@example.com')")
		requireConstraintsEnforced(t, e.admin, "auth", "user-constraints")
	})
	t.Run("ForeignKeysKept", func(t *testing.T) {
		rows, err := e.admin.Query(ctx, `SELECT conrelid::regclass::text FROM pg_constraint
WHERE contype = 'f' AND confrelid = 'auth.users'::regclass AND confdeltype = 'c' ORDER BY 1`)
		require.NoError(t, err)
		tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
		require.NoError(t, err)
		require.Equal(t, []string{"auth.encryption_vault_audit", "auth.encryption_vaults"}, tables)

		pgtest.Exec(t, e.admin, "DELETE FROM auth.users WHERE id = $1", legacyZK.UserID)
		var n int
		require.NoError(t, e.admin.QueryRow(ctx, "SELECT count(*) FROM auth.encryption_vaults WHERE user_id = $1", legacyZK.UserID).Scan(&n))
		require.Zero(t, n, "ON DELETE CASCADE must still remove the vault")
	})
	t.Run("RowLevelSecurityKept", func(t *testing.T) {
		requireRowLevelSecurity(t, e, "auth")
	})
}

// TestUnknownUserOnAdoptedSchema: on a mana-auth schema both tables
// reference auth.users, so a user without a row there (a deleted account
// whose token has not expired) can be neither given a vault nor named by
// an audit row. The foreign-key violation is broker.ErrUnknownUser, not a
// bug; in a fetch batch it names its fetch, so the others can run without
// it; and nothing of a failed call is kept.
func TestUnknownUserOnAdoptedSchema(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	ctx := t.Context()
	pgtest.CreateManaAuthSchema(t, e.migratorPool)
	for _, u := range []string{"known-1", "known-2"} {
		pgtest.Exec(t, e.admin, "INSERT INTO auth.users (id, email) VALUES ($1, $1 || '@example.com')", u)
	}
	e.migrate(t, "auth")
	store := e.store(t, "auth")
	rowsOf := auditRows(e.admin, "auth")
	now := time.Now()
	entry := func(id, user string) *broker.AuditEntry {
		return &broker.AuditEntry{ID: id, UserID: user, Action: broker.ActionInit, Status: 201, CreatedAt: now}
	}
	requireUnknown := func(t *testing.T, err error) {
		t.Helper()
		require.ErrorIs(t, err, broker.ErrUnknownUser)
		require.False(t, broker.IsUnavailable(err))
	}

	t.Run("VaultInsert", func(t *testing.T) {
		requireUnknown(t, store.InUserTx(ctx, "ghost", func(tx broker.Tx) error {
			_, err := tx.VaultInsert(ctx, &broker.Vault{UserID: "ghost", WrappedMK: ptr("d3JhcA=="), WrapIV: ptr(""),
				FormatVersion: broker.FormatBound, KEKID: "k", CreatedAt: now, RecoveryFormatVersion: 1})
			return err
		}))
	})
	t.Run("AuditInsert", func(t *testing.T) {
		requireUnknown(t, store.InUserTx(ctx, "ghost", func(tx broker.Tx) error {
			return tx.AuditInsert(ctx, entry("ghost-row", "ghost"))
		}))
	})
	t.Run("VaultFetchNamesTheFetch", func(t *testing.T) {
		outcomes := [broker.FetchDeferred]broker.FetchOutcome{
			broker.FetchMissing: {Action: broker.ActionFailedFetch, Status: 404, Context: "not-initialised"},
		}
		b := &broker.FetchBatch{Outcomes: outcomes}
		for i, user := range []string{"known-1", "ghost", "known-2"} {
			b.Fetches = append(b.Fetches, &broker.Fetch{Audit: &broker.AuditEntry{ID: fmt.Sprintf("fetch-%d", i), UserID: user, CreatedAt: now}})
		}
		err := store.VaultFetch(ctx, b)
		var item *broker.BatchItemError
		require.ErrorAs(t, err, &item)
		require.Equal(t, 1, item.Index)
		requireUnknown(t, item.Err)
		for _, user := range []string{"known-1", "known-2"} {
			rows, err := rowsOf(ctx, user)
			require.NoError(t, err)
			require.Empty(t, rows, "nothing of the failed batch is kept")
		}
		b.Fetches = slices.Delete(b.Fetches, 1, 2)
		require.NoError(t, store.VaultFetch(ctx, b))
		for _, user := range []string{"known-1", "known-2"} {
			rows, err := rowsOf(ctx, user)
			require.NoError(t, err)
			require.Len(t, rows, 1, "recorded once, without the unknown user's fetch")
		}
	})
	t.Run("AuditAppend", func(t *testing.T) {
		requireUnknown(t, store.AuditAppend(ctx, []*broker.AuditEntry{entry("append-1", "known-1"), entry("append-2", "ghost")}))
		rows, err := rowsOf(ctx, "known-1")
		require.NoError(t, err)
		require.Len(t, rows, 1, "only the fetch row above")
	})
}

// requireRowLevelSecurity checks the catalog: both tables enable and force
// row-level security under their original policy names.
func requireRowLevelSecurity(t *testing.T, e *env, schema string) {
	t.Helper()
	rows, err := e.admin.Query(t.Context(), `SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity, p.polname
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_policy p ON p.polrelid = c.oid
WHERE n.nspname = $1 ORDER BY c.relname, p.polname`, schema)
	require.NoError(t, err)
	type rls struct {
		Table          string
		Enabled, Force bool
		Policy         string
	}
	got, err := pgx.CollectRows(rows, pgx.RowToStructByPos[rls])
	require.NoError(t, err)
	require.Equal(t, []rls{
		{"encryption_vault_audit", true, true, "encryption_vault_audit_batch_isolation"},
		{"encryption_vault_audit", true, true, "encryption_vault_audit_user_isolation"},
		{"encryption_vaults", true, true, "encryption_vaults_batch_isolation"},
		{"encryption_vaults", true, true, "encryption_vaults_user_isolation"},
	}, got)
}

func TestFreshSchemaRowLevelSecurity(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.migrate(t, "keybroker")
	requireRowLevelSecurity(t, e, "keybroker")
}

func utc(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	u := t.UTC()
	return &u
}
