package main

import (
	"bytes"
	"encoding/json"
	"io"
	"maps"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/internal/testkit/pgtest"
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
	require.Contains(t, status, "rollout of env-v1: done: the replicas configured with it wrap under it")

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

// TestServeHoldsANewKEKForAnOldReplica: two real servers on one database,
// one of the old configuration (env-v1 only) and one of the new (env-v2
// active, env-v1 decrypt-only). The new one's /readyz is ready and says
// the rollout waits (new wraps under env-v1), and its re-wrap job moves
// nothing; once the old server stops (and withdraws its announcement),
// the rows move to env-v2 and /readyz says so.
func TestServeHoldsANewKEKForAnOldReplica(t *testing.T) {
	t.Parallel()
	db := newRotationDB(t, 10, 0)
	env := withServe(t, db.env)
	env["KEYBROKER_ROLLOUT_HEARTBEAT"] = "1s"
	env["KEYBROKER_REWRAP_INTERVAL"] = "1s"
	oldEnv := maps.Clone(env)
	oldEnv["KEYBROKER_KEK"] = "env://OLD_KEK?id=env-v1"
	oldEnv["KEYBROKER_ROLLOUT_HEARTBEAT"] = "10s" // it stops cleanly: no need to wait for it to lapse
	delete(oldEnv, "KEYBROKER_KEK_RETIRED")
	old := startServe(t, oldEnv, "serve")

	runs := make(chan error, 100)
	fresh := startServeWithHooks(t, env, &hooks{rewrapRun: func(_ *broker.RewrapResult, err error) {
		select {
		case runs <- err:
		default:
		}
	}})
	readyz := func() (int, map[string]any) {
		res, err := http.Get("http://" + fresh.addr + "/readyz")
		require.NoError(t, err)
		defer res.Body.Close()
		var body map[string]any
		require.NoError(t, json.NewDecoder(res.Body).Decode(&body))
		return res.StatusCode, body
	}
	status, body := readyz()
	require.Equal(t, http.StatusOK, status, "%v", body)
	rollout := body["rollout"].(map[string]any)
	require.Equal(t, "env-v2", rollout["configured"])
	require.Equal(t, "env-v1", rollout["writes"])
	require.Equal(t, true, rollout["waiting"])
	metrics := func() string {
		res, err := http.Get("http://" + fresh.addr + "/metrics")
		require.NoError(t, err)
		defer res.Body.Close()
		b, err := io.ReadAll(res.Body)
		require.NoError(t, err)
		return string(b)
	}
	m := metrics()
	require.Contains(t, m, `keybroker_rollout_waiting{configured_kek_id="env-v2",writes_kek_id="env-v1"} 1`)
	require.Contains(t, m, `keybroker_rollout_replicas{state="blocking"} 1`)
	require.Contains(t, m, `keybroker_rollout_replicas{state="live"} 2`)
	select {
	case err := <-runs:
		require.ErrorIs(t, err, broker.ErrRolloutWaiting)
	case <-time.After(time.Minute):
		t.Fatal("the re-wrap job never ran")
	}
	var onNew int
	require.NoError(t, db.admin.QueryRow(t.Context(), `SELECT count(*) FROM keybroker.encryption_vaults WHERE kek_id <> 'env-v1'`).Scan(&onNew))
	require.Zero(t, onNew)

	require.NoError(t, old.stop())
	require.Eventually(t, func() bool {
		_, body := readyz()
		return body["rollout"].(map[string]any)["waiting"] == false
	}, time.Minute, 50*time.Millisecond)
	require.Eventually(t, func() bool {
		require.NoError(t, db.admin.QueryRow(t.Context(), `SELECT count(*) FROM keybroker.encryption_vaults WHERE kek_id <> 'env-v2'`).Scan(&onNew))
		return onNew == 0
	}, time.Minute, 50*time.Millisecond, "the rows move once the old server is gone")
	_, body = readyz()
	require.Equal(t, "env-v2", body["rollout"].(map[string]any)["writes"])
	require.Contains(t, metrics(), `keybroker_rollout_waiting{configured_kek_id="env-v2",writes_kek_id="env-v2"} 0`)
}
