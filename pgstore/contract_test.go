package pgstore_test

import (
	"crypto/rand"
	"encoding/hex"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/broker/storetest"
	"github.com/keybroker/keybroker/internal/testkit/pgtest"
	"github.com/keybroker/keybroker/kekproviders/localkek"
	"github.com/keybroker/keybroker/pgstore"
)

// TestStoreContract runs the store contract suite as the non-superuser
// runtime role: a superuser would bypass row-level security and the suite
// would prove nothing about it. Each subtest gets a schema of its own.
func TestStoreContract(t *testing.T) {
	t.Parallel()
	storetest.Run(t, newEnv(t).harness)
}

// TestDataKeyContract runs the data-key part of the contract as the
// runtime role, each subtest in a schema of its own.
func TestDataKeyContract(t *testing.T) {
	t.Parallel()
	storetest.RunDataKeys(t, newEnv(t).harness)
}

// TestReplicaContract runs the announcement part of the contract as the
// runtime role, which holds no grant on the announcements' table: it goes
// through the migration's functions, as an install with split roles that
// predates the table does.
func TestReplicaContract(t *testing.T) {
	t.Parallel()
	storetest.RunReplicas(t, newEnv(t).harness)
}

// harness migrates a new schema, whose name needs quoting, grants the
// runtime role what keybroker's runtime needs (the erasure's DELETE on
// the audit table included), and opens the store on it as that role.
func (e *env) harness(t *testing.T, _ bool) storetest.Harness {
	return e.harnessIn(t, `kb "contract" `+randomHex(6))
}

func (e *env) harnessIn(t *testing.T, schema string) storetest.Harness {
	e.migrate(t, schema)
	grantErase(t, e, schema)
	return storetest.Harness{Store: e.store(t, schema), AuditRows: auditRows(e.admin, schema),
		ReopenFormat1: func(t *testing.T) { pgtest.ReopenFormat1(t, e.admin, schema) }}
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// TestAuditSealContract runs the tamper-evidence part of the contract as
// the runtime role, the attacker being a superuser with triggers
// disabled (session_replication_role = replica), each subtest in a
// schema of its own.
func TestAuditSealContract(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	storetest.RunAuditSeal(t, func(t *testing.T) (storetest.Harness, func(*testing.T, string)) {
		schema := `kb "seal" ` + randomHex(6)
		return e.harnessIn(t, schema), func(t *testing.T, sql string) { tamperAsSuperuser(t, e.admin, schema, sql) }
	})
}

// tamperAsSuperuser runs sql on schema as a superuser with triggers and
// row-level security out of the way, as an attacker with the database's
// keys (not keybroker's) could.
func tamperAsSuperuser(t *testing.T, admin *pgxpool.Pool, schema, sql string) {
	t.Helper()
	tx, err := admin.Begin(t.Context())
	require.NoError(t, err)
	defer func() { _ = tx.Rollback(t.Context()) }()
	_, err = tx.Exec(t.Context(), "SET LOCAL session_replication_role = replica")
	require.NoError(t, err)
	_, err = tx.Exec(t.Context(), "SELECT set_config('search_path', $1, true)", pgx.Identifier{schema}.Sanitize())
	require.NoError(t, err)
	tag, err := tx.Exec(t.Context(), sql)
	require.NoError(t, err, sql)
	require.NotZero(t, tag.RowsAffected(), "the tampering changed nothing: %s", sql)
	require.NoError(t, tx.Commit(t.Context()))
}

// TestAuditVerifyNamesACopiedRow: a writer who drops the primary key can
// insert an exact copy of a row, MAC included; verify names the copy.
func TestAuditVerifyNamesACopiedRow(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	const schema = "keybroker"
	store := e.harnessIn(t, schema).Store.(*pgstore.Store)
	ctx := t.Context()
	kek, err := localkek.New("k1", make([]byte, 32), true)
	require.NoError(t, err)
	ring, err := broker.NewKeyring(kek)
	require.NoError(t, err)
	key, err := broker.LoadAuditKey(ctx, store, ring)
	require.NoError(t, err)
	row := &broker.AuditEntry{ID: "copied", UserID: "u", Action: broker.ActionFetch, Status: 200, CreatedAt: time.Now().Add(-time.Hour).Truncate(time.Microsecond)}
	row.MAC = key.RowMAC(row)
	require.NoError(t, store.AuditAppend(ctx, []*broker.AuditEntry{row}))
	_, err = broker.SealAudit(ctx, store, key, time.Now().Add(-broker.AuditSettle))
	require.NoError(t, err)

	// Whatever the primary key's name (a partitioned table's holds the time).
	pgtest.Exec(t, e.admin, `DO $$ DECLARE pk text; BEGIN
    SELECT conname INTO pk FROM pg_constraint WHERE conrelid = 'keybroker.encryption_vault_audit'::regclass AND contype = 'p';
    EXECUTE format('ALTER TABLE keybroker.encryption_vault_audit DROP CONSTRAINT %I', pk);
END $$`)
	tamperAsSuperuser(t, e.admin, schema, "INSERT INTO encryption_vault_audit SELECT * FROM encryption_vault_audit WHERE id = 'copied'")
	r, err := broker.VerifyAudit(ctx, store, key, broker.VerifyOptions{})
	require.NoError(t, err)
	require.Len(t, r.Findings, 1)
	require.Equal(t, broker.AuditForged, r.Findings[0].Kind)
	require.Equal(t, "copied", r.Findings[0].RowID)
	require.EqualValues(t, 1, r.Verified, "the first copy")
}
