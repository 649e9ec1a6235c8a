package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/internal/testkit/pgtest"
	"github.com/keybroker/keybroker/pgstore"
)

// auditDB is a migrated database whose rows a server of this release
// wrote and sealed, and the superuser's pool to tamper with it.
type auditDB struct {
	env   map[string]string
	store *pgstore.Store
	key   *broker.AuditKey
	exec  func(sql string) // as the superuser
}

func newAuditDB(t *testing.T) *auditDB {
	t.Helper()
	b64, kek := newKEKMaterial(t, "k1")
	role, adminURL := pgtest.NewPlainDatabase(t)
	db := &auditDB{env: map[string]string{"DATABASE_URL": role.URL, "K": b64, "KEYBROKER_KEK": "env://K?id=k1", "KEYBROKER_LOG_LEVEL": "warn"}}
	require.NoError(t, run(t.Context(), []string{"migrate"}, envFunc(db.env), io.Discard, io.Discard, nil))
	admin := pgtest.NewPool(t, adminURL)
	db.exec = func(sql string) { pgtest.Exec(t, admin, sql) }
	var err error
	db.store, err = pgstore.New(t.Context(), pgstore.Config{Pool: pgtest.NewPool(t, role.URL), Schema: "keybroker"})
	require.NoError(t, err)
	ring, err := broker.NewKeyring(kek)
	require.NoError(t, err)
	db.key, err = broker.LoadAuditKey(t.Context(), db.store, ring)
	require.NoError(t, err)
	return db
}

// write appends rows created at the given times, MAC'd as a server does.
func (db *auditDB) write(t *testing.T, times ...time.Time) []*broker.AuditEntry {
	var rows []*broker.AuditEntry
	for _, at := range times {
		e := &broker.AuditEntry{ID: fmt.Sprintf("row-%d", at.UnixMicro()), UserID: "user-" + at.Format("05"), Action: broker.ActionFetch,
			IPAddress: "192.0.2.7", Status: 200, CreatedAt: at.Truncate(time.Microsecond)}
		e.MAC = db.key.RowMAC(e)
		rows = append(rows, e)
	}
	require.NoError(t, db.store.AuditAppend(t.Context(), rows))
	return rows
}

func (db *auditDB) run(t *testing.T, args ...string) (string, error) {
	var out bytes.Buffer
	err := run(t.Context(), args, envFunc(db.env), &out, io.Discard, nil)
	return out.String(), err
}

// TestAuditVerifyCommand: verify passes on what keybroker wrote and
// sealed, and names the row a database writer edited.
func TestAuditVerifyCommand(t *testing.T) {
	t.Parallel()
	db := newAuditDB(t)
	base := time.Now().Add(-time.Hour).Truncate(time.Second)
	rows := db.write(t, base, base.Add(time.Second), base.Add(2*time.Second))
	_, err := broker.SealAudit(t.Context(), db.store, db.key, time.Now().Add(-broker.AuditSettle))
	require.NoError(t, err)

	out, err := db.run(t, "audit", "verify")
	require.NoError(t, err, out)
	require.Contains(t, out, "rows verified: 3\n")
	require.Contains(t, out, "OK: no tampering found")

	db.exec("UPDATE keybroker.encryption_vault_audit SET ip_address = '198.51.100.1' WHERE id = '" + rows[1].ID + "'")
	out, err = db.run(t, "audit", "verify")
	require.ErrorContains(t, err, "1 findings")
	require.Contains(t, out, "FINDING modified checkpoint=1 id="+rows[1].ID+" user="+rows[1].UserID)
}

// TestAuditExportResumesFromItsCursor: the export writes every settled
// row once, as documented NDJSON, and a second run with the cursor file
// writes only the rows added since; rows younger than the settle time
// wait.
func TestAuditExportResumesFromItsCursor(t *testing.T) {
	t.Parallel()
	db := newAuditDB(t)
	base := time.Now().Add(-time.Hour).Truncate(time.Second)
	first := db.write(t, base, base.Add(time.Second))
	cursor := filepath.Join(t.TempDir(), "cursor")

	out, err := db.run(t, "audit", "export", "--cursor-file", cursor)
	require.NoError(t, err)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	require.Len(t, lines, 2)
	var got map[string]any
	require.NoError(t, json.Unmarshal([]byte(lines[0]), &got))
	require.Equal(t, first[0].ID, got["id"])
	require.Equal(t, first[0].UserID, got["user_id"])
	require.Equal(t, "fetch", got["action"])
	require.EqualValues(t, 200, got["status"])
	require.Equal(t, "192.0.2.7", got["ip_address"])
	require.Nil(t, got["user_agent"], "no value is null")
	require.Equal(t, first[0].CreatedAt.UTC().Format(time.RFC3339Nano), got["created_at"])
	require.NotEmpty(t, got["mac"])
	require.NotEmpty(t, got["cursor"])

	later := db.write(t, base.Add(time.Minute), time.Now())
	out, err = db.run(t, "audit", "export", "--cursor-file", cursor)
	require.NoError(t, err)
	lines = strings.Split(strings.TrimSpace(out), "\n")
	require.Len(t, lines, 1, "only the new settled row: the newest is younger than the settle time")
	require.Contains(t, lines[0], `"id":"`+later[0].ID+`"`)

	out, err = db.run(t, "audit", "export", "--cursor-file", cursor)
	require.NoError(t, err)
	require.Empty(t, out, "nothing new")
}

// TestAuditExportFollows: with --follow the export keeps running and
// writes a row added after it started, then stops with its context.
func TestAuditExportFollows(t *testing.T) {
	t.Parallel()
	db := newAuditDB(t)
	base := time.Now().Add(-time.Hour).Truncate(time.Second)
	first := db.write(t, base)
	ctx, cancel := context.WithCancel(t.Context())
	var out syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"audit", "export", "--follow"}, envFunc(db.env), &out, io.Discard, nil)
	}()
	require.Eventually(t, func() bool { return strings.Contains(out.String(), first[0].ID) }, 30*time.Second, 50*time.Millisecond)
	added := db.write(t, base.Add(time.Minute))
	require.Eventually(t, func() bool { return strings.Contains(out.String(), added[0].ID) }, 30*time.Second, 50*time.Millisecond,
		"the row added while it ran")
	cancel()
	require.NoError(t, <-done)
	require.Len(t, strings.Split(strings.TrimSpace(out.String()), "\n"), 2, "each row once")
}
