package main

import (
	"bytes"
	"io"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/internal/pgtest"
	"github.com/keybroker/keybroker/pgstore"
)

// TestKEKStatusAndRewrapSeeAReplicaOfTheOldConfiguration: while a live
// replica announces that it holds only the old KEK, `kek status` lists it
// and says the rollout of the new KEK waits for it, and `keybroker
// rewrap`, which would strand it, refuses and moves nothing; once it
// leaves, rewrap moves every row.
func TestKEKStatusAndRewrapSeeAReplicaOfTheOldConfiguration(t *testing.T) {
	t.Parallel()
	db := newRotationDB(t, 12, 0)
	ctx := t.Context()
	store, err := pgstore.New(ctx, pgstore.Config{Pool: pgtest.NewPool(t, db.env["DATABASE_URL"]), Schema: "keybroker"})
	require.NoError(t, err)
	old := broker.Replica{ID: "old-1", Name: "old-host pid 7", Version: "v-old", ActiveKEK: "env-v1", WritesKEK: "env-v1", KEKIDs: []string{"env-v1"}}
	require.NoError(t, store.ReplicaAnnounce(ctx, old, time.Hour))

	status := db.kekStatus(t)
	require.Contains(t, status, "replicas: 1 live")
	require.Regexp(t, `old-host pid 7\s+v-old\s+env-v1\s+env-v1\s+env-v1\s+`, status)
	require.Contains(t, status, "rollout of env-v2: WAITING for 1 live replica(s) that cannot open it: old-host pid 7")
	require.Contains(t, status, "rollout of env-v1: done: new wraps use it")

	var out bytes.Buffer
	err = run(ctx, []string{"rewrap"}, envFunc(db.env), &out, io.Discard, nil)
	require.ErrorContains(t, err, "1 live replica(s) cannot open the KEK env-v2")
	require.ErrorContains(t, err, "old-host pid 7")
	var moved int
	require.NoError(t, db.admin.QueryRow(ctx, `SELECT count(*) FROM keybroker.encryption_vaults WHERE kek_id <> 'env-v1'`).Scan(&moved))
	require.Zero(t, moved, "the refused rewrap moved nothing")
	require.NoError(t, run(ctx, []string{"rewrap", "--dry-run"}, envFunc(db.env), io.Discard, io.Discard, nil), "a dry run moves nothing and may run")

	require.NoError(t, store.ReplicaLeave(ctx, old.ID))
	require.Contains(t, db.kekStatus(t), "replicas: none announces")
	require.NoError(t, run(ctx, []string{"rewrap"}, envFunc(db.env), &out, io.Discard, nil))
	db.requireAllMoved(t)

	// An announcement the operator does not trust (after a KEK
	// compromise, say) is overridden by turning the heartbeat off.
	require.NoError(t, store.ReplicaAnnounce(ctx, old, time.Hour))
	require.Error(t, run(ctx, []string{"rewrap"}, envFunc(db.env), io.Discard, io.Discard, nil))
	db.env["KEYBROKER_ROLLOUT_HEARTBEAT"] = "0"
	require.NoError(t, run(ctx, []string{"rewrap"}, envFunc(db.env), io.Discard, io.Discard, nil))
}
