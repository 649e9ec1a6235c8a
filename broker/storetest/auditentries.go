package storetest

import (
	"crypto/rand"
	"encoding/hex"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
)

func auditEntry(userID, note string, createdAt time.Time) *broker.AuditEntry {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return &broker.AuditEntry{
		ID:        "audit-" + hex.EncodeToString(b),
		UserID:    userID,
		Action:    broker.ActionFetch,
		IPAddress: "203.0.113.7",
		UserAgent: "Mozilla/5.0 (storetest)",
		Context:   note,
		Status:    200,
		CreatedAt: createdAt,
	}
}

func testAuditRoundTrip(t *testing.T, h Harness) {
	ctx := t.Context()
	userID := newUserID(t)
	full := auditEntry(userID, "unknown-kek:kek-2019", at(9, 123456))
	full.Action, full.Status = broker.ActionFailedFetch, 503
	// Request metadata is optional: empty strings come back empty.
	bare := &broker.AuditEntry{ID: full.ID + "-bare", UserID: userID, Action: broker.ActionKEKRewrap, Status: 200, CreatedAt: at(9, 123457)}

	require.NoError(t, h.Store.InUserTx(ctx, userID, func(tx broker.Tx) error {
		if err := tx.AuditInsert(ctx, full); err != nil {
			return err
		}
		return tx.AuditInsert(ctx, bare)
	}))

	rows := auditRows(t, h, userID)
	require.Len(t, rows, 2)
	for i, want := range []*broker.AuditEntry{full, bare} {
		got := rows[i]
		got.CreatedAt = got.CreatedAt.UTC()
		require.Equal(t, *want, got)
	}
}
