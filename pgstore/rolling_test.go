package pgstore_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/internal/testkit/pgtest"
	"github.com/keybroker/keybroker/kekproviders/localkek"
)

// The previous release's vault statements, verbatim: they name the 13
// columns it knows and nothing of migration 0006.
const (
	previousVaultInsert = `INSERT INTO %s (user_id, wrapped_mk, wrap_iv, format_version, kek_id, key_check, created_at, rotated_at,
    recovery_wrapped_mk, recovery_iv, recovery_format_version, recovery_set_at, zero_knowledge)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
ON CONFLICT (user_id) DO NOTHING`
	previousVaultUpdate = `UPDATE %s SET
    wrapped_mk = $2, wrap_iv = $3, format_version = $4, kek_id = $5, key_check = $6,
    created_at = $7, rotated_at = $8, recovery_wrapped_mk = $9, recovery_iv = $10,
    recovery_format_version = $11, recovery_set_at = $12, zero_knowledge = $13
WHERE user_id = $1`
	previousVaultGet = `SELECT user_id, wrapped_mk, wrap_iv, format_version, kek_id, key_check, created_at, rotated_at,
    recovery_wrapped_mk, recovery_iv, recovery_format_version, recovery_set_at, zero_knowledge FROM %s WHERE user_id = $1`
)

// TestPreviousReleaseServesOnMigratedSchema is a rolling upgrade: the
// schema has every migration (0006 changed encryption_vaults; 0009 adds
// only the replicas' announcements, which the previous release never
// reads, as the runtime role that has no grant on them: TestReplicaContract
// announces through that role) and a replica of the previous release still
// inserts, reads and updates rows — a zero-knowledge row with a kept
// recovery wrap among them — as the runtime role. Its statements satisfy
// every constraint, and what they do not name (the proof verifier, the
// restore slot) survives them for the new release to read.
func TestPreviousReleaseServesOnMigratedSchema(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	const schema = "keybroker"
	e.migrate(t, schema)
	store := e.store(t, schema)
	ctx := t.Context()
	vaults := pgx.Identifier{schema, "encryption_vaults"}.Sanitize()
	created := time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC)

	// The new release wrote a zero-knowledge row with a kept wrap.
	kept := &broker.Vault{
		UserID: "rolling", FormatVersion: broker.FormatBound, KEKID: "env-v1", KeyCheck: ptr("a2N2LW5ldw=="),
		KeyProof: ptr("aGFzaA==:a2N2LW5ldw=="), CreatedAt: created,
		RecoveryWrappedMK: ptr("bmV3LXdyYXA="), RecoveryIV: ptr("bmV3LWl2"), RecoveryFormatVersion: 1, RecoverySetAt: ptr(created),
		ZeroKnowledge: true,
		Restorable: &broker.RestorableRecovery{WrappedMK: "b2xkLXdyYXA=", IV: "b2xkLWl2", FormatVersion: 1,
			SetAt: ptr(created.Add(-time.Hour)), TakenAt: created.Add(time.Minute)},
	}
	require.NoError(t, store.InUserTx(ctx, kept.UserID, func(tx broker.Tx) error {
		_, err := tx.VaultInsert(ctx, kept)
		return err
	}))

	previous := func(userID string, fn func(tx pgx.Tx) error) {
		t.Helper()
		tx, err := e.runtimePool.Begin(ctx)
		require.NoError(t, err)
		defer func() { _ = tx.Rollback(ctx) }()
		_, err = tx.Exec(ctx, "SELECT set_config('app.current_user_id', $1, true)", userID)
		require.NoError(t, err)
		require.NoError(t, fn(tx))
		require.NoError(t, tx.Commit(ctx))
	}
	// The previous release creates a vault, reads the kept row, and
	// leaves zero-knowledge mode on it with a new server wrap.
	previous("old-insert", func(tx pgx.Tx) error {
		_, err := tx.Exec(ctx, fmt.Sprintf(previousVaultInsert, vaults), "old-insert", "d3JhcA==", "", 2, "env-v1", "a2N2", created, nil,
			nil, nil, 1, nil, false)
		return err
	})
	previous(kept.UserID, func(tx pgx.Tx) error {
		var userID string
		var wrapped, iv, kcv, recovery, recoveryIV *string
		var format, recoveryFormat int
		var kekID string
		var createdAt time.Time
		var rotated, recoverySet *time.Time
		var zk bool
		err := tx.QueryRow(ctx, fmt.Sprintf(previousVaultGet, vaults), kept.UserID).Scan(&userID, &wrapped, &iv, &format, &kekID, &kcv,
			&createdAt, &rotated, &recovery, &recoveryIV, &recoveryFormat, &recoverySet, &zk)
		if err != nil {
			return err
		}
		require.True(t, zk)
		_, err = tx.Exec(ctx, fmt.Sprintf(previousVaultUpdate, vaults), kept.UserID, "c2VydmVyLXdyYXA=", "", 2, "env-v1", "a2N2LXJvdGF0ZWQ=",
			createdAt, nil, recovery, recoveryIV, recoveryFormat, recoverySet, false)
		return err
	})

	var got *broker.Vault
	require.NoError(t, store.InUserTx(ctx, kept.UserID, func(tx broker.Tx) error {
		var err error
		got, err = tx.VaultGet(ctx, false)
		return err
	}))
	require.False(t, got.ZeroKnowledge)
	require.Equal(t, "a2N2LXJvdGF0ZWQ=", *got.KeyCheck)
	require.Equal(t, *kept.KeyProof, *got.KeyProof, "the previous release leaves the verifier, now stale: it names another key check value")
	require.NotNil(t, got.Restorable, "the previous release's update keeps the restore slot")
	require.Equal(t, "b2xkLXdyYXA=", got.Restorable.WrappedMK)
	require.True(t, kept.Restorable.TakenAt.Equal(got.Restorable.TakenAt))

	require.NoError(t, store.InUserTx(ctx, "old-insert", func(tx broker.Tx) error {
		v, err := tx.VaultGet(ctx, false)
		require.NoError(t, err)
		require.Nil(t, v.KeyProof)
		require.Nil(t, v.Restorable)
		return nil
	}))
}

// The previous release's audit statements, verbatim: they name the eight
// columns it knows and nothing of migration 0010 (the mac).
const (
	previousAuditAppend = `INSERT INTO %s (id, user_id, action, ip_address, user_agent, context, status, created_at)
SELECT r.id, set_config('app.current_user_id', r.user_id, true), r.action,
    NULLIF(r.ip_address, ''), NULLIF(r.user_agent, ''), NULLIF(r.context, ''), r.status, r.created_at
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::int4[], $8::timestamptz[])
    AS r(id, user_id, action, ip_address, user_agent, context, status, created_at)`
	previousAuditDelete = `DELETE FROM %s WHERE user_id = $1`
)

// TestPreviousReleaseAuditOnSealedSchema is a rolling upgrade of the
// audit trail: on the schema of migration 0010 a replica of the previous
// release keeps appending audit rows (without a MAC) beside the new
// release's. The sealer seals them late and verify lists them by id as
// written without a MAC — never as forged; an edit of one after sealing
// is still named. An erasure by the previous release writes no mark, so
// verify reports its rows as deleted: the documented cost of erasing
// during the upgrade.
func TestPreviousReleaseAuditOnSealedSchema(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	const schema = "keybroker"
	e.migrate(t, schema)
	grantErase(t, e, schema)
	store := e.store(t, schema)
	ctx := t.Context()
	audit := pgx.Identifier{schema, "encryption_vault_audit"}.Sanitize()
	kek, err := localkek.New("k1", make([]byte, 32), true)
	require.NoError(t, err)
	ring, err := broker.NewKeyring(kek)
	require.NoError(t, err)
	key, err := broker.LoadAuditKey(ctx, store, ring)
	require.NoError(t, err)

	base := time.Now().Add(-time.Hour).Truncate(time.Millisecond)
	fresh := &broker.AuditEntry{ID: "new-1", UserID: "u-new", Action: broker.ActionFetch, Status: 200, CreatedAt: base}
	fresh.MAC = key.RowMAC(fresh)
	require.NoError(t, store.AuditAppend(ctx, []*broker.AuditEntry{fresh}))
	// The previous release, as the runtime role.
	_, err = e.runtimePool.Exec(ctx, fmt.Sprintf(previousAuditAppend, audit),
		[]string{"old-1", "old-2", "old-3"}, []string{"u-old", "u-old", "u-gone"}, []string{"fetch", "rotate", "fetch"},
		[]string{"192.0.2.1", "", ""}, []string{"", "", ""}, []string{"", "", ""}, []int32{200, 200, 200},
		[]time.Time{base.Add(time.Second), base.Add(2 * time.Second), base.Add(3 * time.Second)})
	require.NoError(t, err)

	_, err = broker.SealAudit(ctx, store, key, time.Now().Add(-broker.AuditSettle))
	require.NoError(t, err)
	r, err := broker.VerifyAudit(ctx, store, key, broker.VerifyOptions{})
	require.NoError(t, err)
	require.Empty(t, r.Findings)
	require.EqualValues(t, 1, r.Verified)
	require.EqualValues(t, 3, r.SealedLate)
	require.Equal(t, []string{"old-1", "old-2", "old-3"}, r.LateRowIDs)

	pgtest.Exec(t, e.admin, "UPDATE "+audit+" SET action = 'fetch' WHERE id = 'old-2'")
	// The previous release's erasure, in its user's scope.
	err = pgx.BeginFunc(ctx, e.runtimePool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SELECT set_config('app.current_user_id', $1, true)", "u-gone"); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, fmt.Sprintf(previousAuditDelete, audit), "u-gone")
		return err
	})
	require.NoError(t, err)
	r, err = broker.VerifyAudit(ctx, store, key, broker.VerifyOptions{})
	require.NoError(t, err)
	var named []string
	for _, f := range r.Findings {
		named = append(named, string(f.Kind)+" "+f.RowID+" "+f.CreatedAt.UTC().Format(time.RFC3339))
	}
	utc := func(t time.Time) string { return t.UTC().Format(time.RFC3339) }
	require.ElementsMatch(t, []string{
		"forged old-2 " + utc(base.Add(2*time.Second)), "deleted  " + utc(base.Add(2*time.Second)),
		"deleted  " + utc(base.Add(3*time.Second)),
	}, named)
}
