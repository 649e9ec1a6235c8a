package storetest

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
)

// RunReplicas runs the announcement part of the contract
// (broker.ReplicaStore: the one-step rollout) on stores of newHarness
// whose Store is a ReplicaStore, each subtest on an empty one: an
// announcement lists every field back, a renewal replaces it, a leave
// removes it, and one that is not renewed stops being listed when its time
// is up, by the store's clock.
func RunReplicas(t *testing.T, newHarness NewHarness) {
	run(t, newHarness, []subtest{
		{"AnnounceRenewLeave", true, testReplicaAnnounceRenewLeave},
		{"AnnouncementExpires", true, testReplicaAnnouncementExpires},
	})
}

func replicaStore(t *testing.T, h Harness) broker.ReplicaStore {
	t.Helper()
	rs, ok := h.Store.(broker.ReplicaStore)
	require.True(t, ok, "the store takes announcements")
	return rs
}

func testReplicaAnnounceRenewLeave(t *testing.T, h Harness) {
	rs, ctx := replicaStore(t, h), t.Context()
	live, now, err := rs.ReplicaList(ctx)
	require.NoError(t, err)
	require.Empty(t, live)
	require.False(t, now.IsZero(), "the store's time comes without any announcement")

	old := broker.Replica{ID: "r-old", Name: "host-a pid 1", Version: "v1", ActiveKEK: "kek-a", WritesKEK: "kek-a", KEKIDs: []string{"kek-a"}}
	fresh := broker.Replica{ID: "r-new", Name: "host-b pid 1", Version: "v2", ActiveKEK: "kek-b", WritesKEK: "kek-a", KEKIDs: []string{"kek-b", "kek-a"}}
	require.NoError(t, rs.ReplicaAnnounce(ctx, old, 30*time.Minute))
	require.NoError(t, rs.ReplicaAnnounce(ctx, fresh, 30*time.Minute))
	live, now, err = rs.ReplicaList(ctx)
	require.NoError(t, err)
	require.Len(t, live, 2)
	require.Equal(t, "r-old", live[0].ID, "oldest first")
	got := live[1]
	require.Equal(t, fresh.Name, got.Name)
	require.Equal(t, fresh.Version, got.Version)
	require.Equal(t, fresh.ActiveKEK, got.ActiveKEK)
	require.Equal(t, fresh.WritesKEK, got.WritesKEK)
	require.Equal(t, fresh.KEKIDs, got.KEKIDs)
	require.True(t, got.ExpiresAt.After(now.Add(29*time.Minute)), "live for the ttl: expires %s, now %s", got.ExpiresAt, now)
	require.False(t, got.SeenAt.After(now))

	// A renewal replaces what the replica announces and keeps its start.
	fresh.WritesKEK = "kek-b"
	require.NoError(t, rs.ReplicaAnnounce(ctx, fresh, 50*time.Minute))
	live, _, err = rs.ReplicaList(ctx)
	require.NoError(t, err)
	require.Len(t, live, 2)
	require.Equal(t, "kek-b", live[1].WritesKEK)
	require.True(t, live[1].ExpiresAt.After(got.ExpiresAt.Add(19*time.Minute)))
	require.True(t, live[1].StartedAt.Equal(got.StartedAt), "a renewal is not a new start")

	require.NoError(t, rs.ReplicaLeave(ctx, old.ID))
	require.NoError(t, rs.ReplicaLeave(ctx, old.ID), "leaving twice is no error")
	live, _, err = rs.ReplicaList(ctx)
	require.NoError(t, err)
	require.Len(t, live, 1)
	require.Equal(t, "r-new", live[0].ID)
}

func testReplicaAnnouncementExpires(t *testing.T, h Harness) {
	rs, ctx := replicaStore(t, h), t.Context()
	require.NoError(t, rs.ReplicaAnnounce(ctx, broker.Replica{ID: "stays", Name: "n", Version: "v", ActiveKEK: "k", WritesKEK: "k", KEKIDs: []string{"k"}}, time.Hour))
	require.NoError(t, rs.ReplicaAnnounce(ctx, broker.Replica{ID: "dies", Name: "n", Version: "v", ActiveKEK: "k", WritesKEK: "k", KEKIDs: []string{"k"}}, 50*time.Millisecond))
	// The killed replica renews nothing: its announcement lapses by the
	// store's clock, within a bound.
	require.Eventually(t, func() bool {
		live, _, err := rs.ReplicaList(ctx)
		require.NoError(t, err)
		for _, r := range live {
			if r.ID == "dies" {
				return false
			}
		}
		require.Len(t, live, 1)
		return true
	}, 30*time.Second, 20*time.Millisecond)
	require.Error(t, rs.ReplicaAnnounce(ctx, broker.Replica{ID: "x", Name: "n", Version: "v", ActiveKEK: "k", WritesKEK: "k", KEKIDs: []string{"k"}}, 0),
		"an announcement that is dead on arrival is refused")

	// An announcement lives an hour at most, however long it asks for:
	// one that nobody renews holds a rollout back for no longer.
	require.NoError(t, rs.ReplicaAnnounce(ctx, broker.Replica{ID: "greedy", Name: "n", Version: "v", ActiveKEK: "k", WritesKEK: "k", KEKIDs: []string{"k"}}, 1000*time.Hour))
	live, now, err := rs.ReplicaList(ctx)
	require.NoError(t, err)
	found := false
	for _, r := range live {
		if r.ID == "greedy" {
			found = true
			require.False(t, r.ExpiresAt.After(now.Add(time.Hour)), "expires %s, now %s", r.ExpiresAt, now)
		}
	}
	require.True(t, found)
}
