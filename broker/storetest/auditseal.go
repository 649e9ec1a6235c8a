package storetest

import (
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
)

// TamperHarness returns an empty store and a function that runs SQL on
// its database as an attacker with write access would, past every
// protection keybroker has (PostgreSQL: a superuser with triggers
// disabled), table names unqualified. The suite writes its statements in
// the SQL both stores accept, with literal values.
type TamperHarness func(t *testing.T) (Harness, func(t *testing.T, sql string))

// RunAuditSeal runs the tamper-evidence part of the contract
// (docs/audit.md) on stores that are a broker.AuditSealStore, each
// subtest on an empty store.
func RunAuditSeal(t *testing.T, newHarness TamperHarness) {
	for _, tc := range []struct {
		name string
		fn   func(t *testing.T, h Harness, tamper func(string))
	}{
		{"AuditKeyIsOneKeyWrappedOnce", testAuditKeyOnce},
		{"AuditVerifyCleanAfterSeal", testAuditVerifyClean},
		{"AuditVerifyNamesEditDeleteInsertReorder", testAuditVerifyNamesTampering},
		{"AuditRetentionAndErasureVerify", testAuditRetentionAndErasure},
		{"AuditCheckpointTamperingIsNamed", testAuditCheckpointTampering},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h, tamper := newHarness(t)
			tc.fn(t, h, func(sql string) { tamper(t, sql) })
		})
	}
}

// gcmKEK is a real AES-256-GCM KEK with the binding as associated data:
// the suite needs a keyring, and storetest may not import a provider.
type gcmKEK struct {
	id   string
	aead cipher.AEAD
}

func newGCMKEK(t *testing.T, id string) *gcmKEK {
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	block, err := aes.NewCipher(key)
	require.NoError(t, err)
	aead, err := cipher.NewGCM(block)
	require.NoError(t, err)
	return &gcmKEK{id: id, aead: aead}
}

func (k *gcmKEK) ID() string { return k.id }

func (k *gcmKEK) Wrap(_ context.Context, plaintext []byte, binding map[string]string) ([]byte, error) {
	aad, _ := json.Marshal(binding) // sorted keys
	nonce := make([]byte, k.aead.NonceSize())
	_, _ = rand.Read(nonce)
	return k.aead.Seal(nonce, nonce, plaintext, aad), nil
}

func (k *gcmKEK) Unwrap(_ context.Context, ciphertext []byte, binding map[string]string) ([]byte, error) {
	aad, _ := json.Marshal(binding)
	n := k.aead.NonceSize()
	if len(ciphertext) < n {
		return nil, fmt.Errorf("storetest: short ciphertext")
	}
	return k.aead.Open(nil, ciphertext[:n], ciphertext[n:], aad)
}

func sealStore(t *testing.T, h Harness) broker.AuditSealStore {
	s, ok := h.Store.(broker.AuditSealStore)
	require.True(t, ok, "the store is a broker.AuditSealStore")
	return s
}

func auditKey(t *testing.T, h Harness, keks ...broker.KEK) *broker.AuditKey {
	ring, err := broker.NewKeyring(keks[0], keks[1:]...)
	require.NoError(t, err)
	key, err := broker.LoadAuditKey(t.Context(), sealStore(t, h), ring)
	require.NoError(t, err)
	return key
}

// auditRow is a row as keybroker writes it, MAC'd by key (none when nil).
func auditRow(key *broker.AuditKey, user, note string, created time.Time) *broker.AuditEntry {
	e := &broker.AuditEntry{ID: "row" + note, UserID: user, Action: broker.ActionFetch, IPAddress: "192.0.2.1",
		Context: note, Status: 200, CreatedAt: created.Truncate(time.Microsecond)}
	if key != nil {
		e.MAC = key.RowMAC(e)
	}
	return e
}

func verify(t *testing.T, h Harness, key *broker.AuditKey) *broker.AuditReport {
	r, err := broker.VerifyAudit(t.Context(), sealStore(t, h), key, broker.VerifyOptions{})
	require.NoError(t, err)
	return r
}

// testAuditKeyOnce: the first load makes the key, later loads (another
// replica) read the same one, and a new active KEK adds its wrap while
// the old KEK's wrap still opens it.
func testAuditKeyOnce(t *testing.T, h Harness, _ func(string)) {
	kekA, kekB := newGCMKEK(t, "kek-a"), newGCMKEK(t, "kek-b")
	first, second := auditKey(t, h, kekA), auditKey(t, h, kekA)
	e := auditRow(nil, "u", "1", time.Now())
	require.Equal(t, first.RowMAC(e), second.RowMAC(e), "every load returns the one key")
	rotated := auditKey(t, h, kekB, kekA)
	require.Equal(t, first.RowMAC(e), rotated.RowMAC(e))
	wraps, err := sealStore(t, h).AuditKeyWraps(t.Context())
	require.NoError(t, err)
	require.Len(t, wraps, 2, "one wrap per KEK")
	onlyB := auditKey(t, h, kekB)
	require.Equal(t, first.RowMAC(e), onlyB.RowMAC(e), "the new KEK alone opens it once the old one retires")
	ring, err := broker.NewKeyring(newGCMKEK(t, "kek-c"))
	require.NoError(t, err)
	_, err = broker.LoadAuditKey(t.Context(), sealStore(t, h), ring)
	require.ErrorIs(t, err, broker.ErrAuditKeyUnopenable)
}

// writeRows appends n MAC'd rows a second apart from base, and one row
// without a MAC (an older release's) in the middle.
func writeRows(t *testing.T, h Harness, key *broker.AuditKey, base time.Time, n int) []*broker.AuditEntry {
	var rows []*broker.AuditEntry
	for i := range n {
		k := key
		if i == n/2 {
			k = nil
		}
		rows = append(rows, auditRow(k, fmt.Sprintf("user-%d", i%3), fmt.Sprintf("%02d", i), base.Add(time.Duration(i)*time.Second)))
	}
	require.NoError(t, h.Store.AuditAppend(t.Context(), rows))
	return rows
}

func seal(t *testing.T, h Harness, key *broker.AuditKey, upto time.Time) int {
	n, err := broker.SealAudit(t.Context(), sealStore(t, h), key, upto)
	require.NoError(t, err)
	return n
}

// testAuditVerifyClean: rows keybroker wrote verify, sealed or not; the
// row without a MAC is sealed late and named as such, never as forged.
func testAuditVerifyClean(t *testing.T, h Harness, _ func(string)) {
	key := auditKey(t, h, newGCMKEK(t, "kek-a"))
	base := time.Now().Add(-time.Hour)
	rows := writeRows(t, h, key, base, 10)
	r := verify(t, h, key)
	require.Empty(t, r.Findings)
	require.EqualValues(t, 10, r.Unsealed)
	require.EqualValues(t, 1, r.UnsealedNoMAC)

	require.Equal(t, 1, seal(t, h, key, base.Add(5*time.Second)))
	require.Equal(t, 1, seal(t, h, key, base.Add(time.Hour)))
	require.Equal(t, 0, seal(t, h, key, base.Add(time.Hour)), "nothing new to seal")
	r = verify(t, h, key)
	require.Empty(t, r.Findings)
	require.EqualValues(t, 2, r.Checkpoints)
	require.EqualValues(t, 9, r.Verified)
	require.EqualValues(t, 1, r.SealedLate)
	require.Equal(t, []string{rows[5].ID}, r.LateRowIDs)
	require.Zero(t, r.Unsealed)
}

func findingsOf(r *broker.AuditReport, kind broker.AuditFindingKind) []broker.AuditFinding {
	var out []broker.AuditFinding
	for _, f := range r.Findings {
		if f.Kind == kind {
			out = append(out, f)
		}
	}
	return out
}

func rowIDs(fs []broker.AuditFinding) []string {
	var ids []string
	for _, f := range fs {
		ids = append(ids, f.RowID)
	}
	return ids
}

func createdAts(fs []broker.AuditFinding) []string {
	var ts []string
	for _, f := range fs {
		ts = append(ts, utc(f.CreatedAt))
	}
	return ts
}

func utc(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

// sqlTime is t as a literal both stores compare with their created_at.
func sqlTime(t time.Time) string {
	return "'" + t.UTC().Format("2006-01-02T15:04:05.000000") + "Z'"
}

// testAuditVerifyNamesTampering is the attack: a database writer edits a
// row, deletes the newest sealed one, inserts one and swaps the times of
// two, with SQL; verify names each.
func testAuditVerifyNamesTampering(t *testing.T, h Harness, tamper func(string)) {
	key := auditKey(t, h, newGCMKEK(t, "kek-a"))
	base := time.Now().Add(-time.Hour).Truncate(time.Second)
	rows := writeRows(t, h, key, base, 10)
	seal(t, h, key, base.Add(time.Hour))
	require.Empty(t, verify(t, h, key).Findings)

	tamper("UPDATE encryption_vault_audit SET context = 'harmless' WHERE id = '" + rows[1].ID + "'")
	tamper("DELETE FROM encryption_vault_audit WHERE id = '" + rows[9].ID + "'")
	tamper("INSERT INTO encryption_vault_audit (id, user_id, action, status, created_at, mac) VALUES " +
		"('forged', 'user-0', 'fetch', 200, " + sqlTime(rows[2].CreatedAt.Add(time.Millisecond)) + ", NULL)")
	tamper("UPDATE encryption_vault_audit SET created_at = " + sqlTime(rows[4].CreatedAt) + " WHERE id = '" + rows[3].ID + "'")
	tamper("UPDATE encryption_vault_audit SET created_at = " + sqlTime(rows[3].CreatedAt) + " WHERE id = '" + rows[4].ID + "'")
	// The older release's row, edited after it was sealed late.
	tamper("UPDATE encryption_vault_audit SET status = 500 WHERE id = '" + rows[5].ID + "'")

	r := verify(t, h, key)
	require.Equal(t, []string{rows[1].ID}, rowIDs(findingsOf(r, broker.AuditModified)), "the edited row")
	require.ElementsMatch(t, []string{"forged", rows[3].ID, rows[4].ID, rows[5].ID}, rowIDs(findingsOf(r, broker.AuditForged)),
		"the inserted row, the two whose times were swapped, the edited unMAC'd one")
	require.ElementsMatch(t, []string{utc(rows[9].CreatedAt), utc(rows[3].CreatedAt), utc(rows[4].CreatedAt), utc(rows[5].CreatedAt)},
		createdAts(findingsOf(r, broker.AuditDeleted)), "the deleted row, and the sealed places the moved and edited rows left")
	require.Len(t, r.Findings, 9)
}

// testAuditRetentionAndErasure: rows that retention drops (after its
// mark), with the checkpoints of the windows it emptied, or an erasure
// deletes (with its mark, which names no user) verify as legitimately
// gone; the same deletion without a mark does not.
func testAuditRetentionAndErasure(t *testing.T, h Harness, tamper func(string)) {
	key := auditKey(t, h, newGCMKEK(t, "kek-a"))
	base := time.Now().Add(-time.Hour).Truncate(time.Second)
	rows := writeRows(t, h, key, base, 9)
	seal(t, h, key, rows[2].CreatedAt) // checkpoint 1: rows 0 and 1
	seal(t, h, key, base.Add(time.Hour))

	tamper("DELETE FROM encryption_vault_audit WHERE created_at < " + sqlTime(rows[2].CreatedAt))
	r := verify(t, h, key)
	require.Len(t, findingsOf(r, broker.AuditDeleted), 2, "dropped without a retention mark")

	require.NoError(t, broker.MarkAuditRetention(t.Context(), sealStore(t, h), key, rows[2].CreatedAt, time.Now()))
	r = verify(t, h, key)
	require.Empty(t, r.Findings)
	require.EqualValues(t, 2, r.Retained)
	// Retention may take the checkpoints of the windows it emptied.
	tamper("DELETE FROM encryption_vault_audit_checkpoints WHERE n = 1")
	r = verify(t, h, key)
	require.Empty(t, r.Findings)
	require.EqualValues(t, 1, r.Checkpoints)

	res, err := h.Store.VaultErase(t.Context(), "user-2", func(erased []broker.AuditEntry) *broker.AuditMark {
		return key.ErasureMark(erased, time.Now())
	})
	require.NoError(t, err)
	require.EqualValues(t, 3, res.AuditRowsDeleted, "rows 2, 5 and 8")
	r = verify(t, h, key)
	require.Empty(t, r.Findings)
	require.EqualValues(t, 3, r.Erased)

	marks, err := sealStore(t, h).AuditMarks(t.Context())
	require.NoError(t, err)
	for _, m := range marks {
		require.NotContains(t, string(m.Entries), "user-2", "a mark holds no user id")
		require.NotContains(t, m.ID, "user-2")
	}
	// Erasing without a mark (an older release's erasure) is reported:
	// rows 4 (sealed late) and 7; row 1 went by retention.
	_, err = h.Store.VaultErase(t.Context(), "user-1", nil)
	require.NoError(t, err)
	require.Len(t, findingsOf(verify(t, h, key), broker.AuditDeleted), 2)
}

// testAuditCheckpointTampering: an edited checkpoint, a deleted one in
// the middle and deleted newest ones (staleness) are named.
func testAuditCheckpointTampering(t *testing.T, h Harness, tamper func(string)) {
	key := auditKey(t, h, newGCMKEK(t, "kek-a"))
	base := time.Now().Add(-time.Hour).Truncate(time.Second)
	writeRows(t, h, key, base, 6)
	for i := 1; i <= 4; i++ {
		seal(t, h, key, base.Add(time.Duration(i)*time.Second+time.Millisecond))
	}
	require.Empty(t, verify(t, h, key).Findings)

	tamper("UPDATE encryption_vault_audit_checkpoints SET row_count = row_count + 1 WHERE n = 1")
	tamper("DELETE FROM encryption_vault_audit_checkpoints WHERE n = 2")
	r := verify(t, h, key)
	bad := findingsOf(r, broker.AuditCheckpointBad)
	require.Len(t, bad, 2)
	require.EqualValues(t, 1, bad[0].Checkpoint, "the edited one")
	require.EqualValues(t, 3, bad[1].Checkpoint, "the one after the gap")

	r, err := broker.VerifyAudit(t.Context(), sealStore(t, h), key, broker.VerifyOptions{StaleAfter: time.Minute})
	require.NoError(t, err)
	require.Len(t, findingsOf(r, broker.AuditStale), 1, "the newest checkpoint is an hour old")
}
