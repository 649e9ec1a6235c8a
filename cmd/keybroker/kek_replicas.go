package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/cmd/keybroker/internal/config"
)

// printReplicas is the part of `kek status` about the one-step rollout:
// the live replicas' announcements (which KEKs each holds, which it is
// configured to wrap with and which it wraps with now) and, for each
// KEK a replica is configured to wrap with, whom its rollout waits for.
// configured is the active KEK id of this command's configuration ("" when
// none is configured); expected is KEYBROKER_ROLLOUT_REPLICAS.
func printReplicas(ctx context.Context, w io.Writer, store broker.Store, configured string, expected int) {
	rs, ok := store.(broker.ReplicaStore)
	if !ok {
		fmt.Fprintln(w, "replicas: the embedded store serves one process: no rollout to wait for")
		return
	}
	live, now, err := rs.ReplicaList(ctx)
	if err != nil {
		fmt.Fprintf(w, "replicas: cannot read the announcements (is the schema migrated?): %v\n", err)
		return
	}
	if len(live) == 0 {
		fmt.Fprintln(w, "replicas: none announces (replicas of a release before the announcements, or KEYBROKER_ROLLOUT_HEARTBEAT=0, are not seen)")
	} else {
		fmt.Fprintf(w, "replicas: %d live\n", len(live))
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "  replica\tversion\tconfigured\twrites\topens\texpires in")
		for _, r := range live {
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\n", r.Name, r.Version, r.ActiveKEK, r.WritesKEK,
				strings.Join(r.KEKIDs, ", "), r.ExpiresAt.Sub(now).Round(time.Second))
		}
		tw.Flush()
	}
	var actives []string
	if configured != "" {
		actives = append(actives, configured)
	}
	for _, r := range live {
		if !slices.Contains(actives, r.ActiveKEK) {
			actives = append(actives, r.ActiveKEK)
		}
	}
	for _, id := range actives {
		fmt.Fprintf(w, "rollout of %s: %s\n", id, rolloutWaitsFor(id, live, expected))
	}
}

// rolloutWaitsFor says what the rollout of KEK id waits for, given the
// live announcements.
func rolloutWaitsFor(id string, live []broker.Replica, expected int) string {
	st := broker.RolloutDecision(id, nil, "", live, expected)
	if st.Blocking > 0 {
		return fmt.Sprintf("WAITING for %d live replica(s) that cannot open it: %s; until they are replaced or their announcements expire, new wraps stay on the previous KEK and the re-wrap job waits",
			st.Blocking, strings.Join(st.BlockedBy, ", "))
	}
	done := slices.ContainsFunc(live, func(r broker.Replica) bool { return r.WritesKEK == id })
	switch {
	case expected > 0 && len(live) < expected && !done:
		return fmt.Sprintf("WAITING: %d of %d expected replicas announce (KEYBROKER_ROLLOUT_REPLICAS)", len(live), expected)
	case done:
		return "done: the replicas configured with it wrap under it"
	default:
		return "every live replica opens it"
	}
}

// checkNoReplicaStranded refuses `keybroker rewrap` while a live replica
// announces that it cannot open the KEK the rows would move to: each row
// moved would answer 503 on it. Announcements that cannot be read (a
// schema before them) are only logged.
func checkNoReplicaStranded(ctx context.Context, store broker.Store, active string, log *slog.Logger) error {
	rs, ok := store.(broker.ReplicaStore)
	if !ok {
		return nil
	}
	live, _, err := rs.ReplicaList(ctx)
	if err != nil {
		log.Warn("cannot read the replicas' announcements; moving rows without checking that every replica opens the active KEK",
			slog.String("error", err.Error()))
		return nil
	}
	if st := broker.RolloutDecision(active, nil, "", live, 0); st.Blocking > 0 {
		return fmt.Errorf("%d live replica(s) cannot open the KEK %s, and every row moved to it would answer 503 there: %s.\n"+
			"  Replace them with replicas that hold %s, or stop them, then run this again (\"keybroker kek status\" shows the rollout);\n"+
			"  %s=0 moves the rows whatever the announcements say",
			st.Blocking, active, strings.Join(st.BlockedBy, ", "), active, config.Name("rollout-heartbeat"))
	}
	return nil
}

// rolloutHold is KeyringConfig.Hold: the KEK a replica makes new wraps
// under, and moves data keys to, before it has announced itself, so that
// not even its first load moves a data key under a KEK a live replica
// cannot open. The operator commands hold too (they load the same data
// keys), on the announcements alone; serve with the heartbeat off does
// not.
func (o *openedKEKs) rolloutHold(ctx context.Context, store broker.Store, log *slog.Logger) string {
	expected := 0
	if o.rollout != nil {
		if o.rollout.Heartbeat <= 0 {
			return ""
		}
		expected = o.rollout.Replicas
	}
	ids := make([]string, len(o.specs))
	for i, spec := range o.specs {
		ids[i] = spec.ID
	}
	hold, err := broker.RolloutHold(ctx, store, ids, expected)
	if err != nil {
		log.Warn("cannot read the replicas' announcements before loading the keyring", slog.String("error", err.Error()))
	}
	if hold != "" {
		log.Warn("rollout: a live replica cannot open the configured KEK yet: new wraps go under another until it can",
			slog.String("configured_kek", ids[0]), slog.String("writes_kek", hold))
	}
	return hold
}
