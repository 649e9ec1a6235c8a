package broker

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"
)

// One-step rollout of a new KEK
//
// An operator who changes the active KEK on every replica at once, the
// old one listed as decrypt-only, rolls the change out replica by
// replica: for a while, replicas of the old configuration, which cannot
// open the new KEK, serve beside those of the new one. A row wrapped
// under the new KEK in that window — a new vault, a rotation, the re-wrap
// job's move — would answer 503 on every old replica.
//
// So replicas announce, through the store (ReplicaStore), which KEK ids
// they hold, renewed on a heartbeat: a replica that dies stops counting
// when its announcement expires, one that stops cleanly leaves at once.
// A replica makes new wraps under its configured active KEK only once
// every live replica announces it; until then it writes under a KEK it
// holds that every live replica can open (the previous active one, which
// the operator lists as decrypt-only), and the re-wrap job, which would
// move rows to it, waits. Replicas of a release that does not announce
// are invisible: RolloutConfig.ExpectedReplicas covers them
// (docs/rotation.md).

// Replica is one live replica's announcement.
type Replica struct {
	// ID is unique per process start.
	ID string
	// Name is for people: the host name and process id.
	Name    string
	Version string
	// ActiveKEK is the KEK id the replica is configured to wrap with;
	// WritesKEK the one it wraps with now.
	ActiveKEK, WritesKEK string
	// KEKIDs are the ids of every KEK it holds (its configured keyring).
	KEKIDs []string
	// StartedAt, SeenAt and ExpiresAt are the store's clock; the store
	// sets them.
	StartedAt, SeenAt, ExpiresAt time.Time
}

// Opens reports whether the replica holds the KEK id.
func (r *Replica) Opens(id string) bool { return slices.Contains(r.KEKIDs, id) }

// ReplicaStore is a store through which replicas announce their KEKs. The
// store's clock decides who is live, so replicas need not agree on the
// time. The embedded SQLite store is not one: it serves one process,
// which has nobody to wait for.
type ReplicaStore interface {
	// ReplicaAnnounce inserts or renews r (by r.ID), live for ttl from
	// now.
	ReplicaAnnounce(ctx context.Context, r Replica, ttl time.Duration) error
	// ReplicaList returns the live replicas, oldest first, and the
	// store's time.
	ReplicaList(ctx context.Context) ([]Replica, time.Time, error)
	// ReplicaLeave removes the replica's announcement.
	ReplicaLeave(ctx context.Context, id string) error
}

// DefaultRolloutHeartbeat is RolloutConfig.Heartbeat's usual value.
const DefaultRolloutHeartbeat = 10 * time.Second

// RolloutTTLBeats is how many heartbeats an announcement outlives its
// last renewal: a replica that misses two in a row still counts.
const RolloutTTLBeats = 3

// RolloutConfig is a server's part in the one-step rollout.
type RolloutConfig struct {
	// Heartbeat is how often the replica renews its announcement and
	// reads the others'; its announcement expires after RolloutTTLBeats
	// heartbeats. Zero announces nothing and waits for nobody.
	Heartbeat time.Duration
	// ExpectedReplicas, when positive, is the number of replicas that
	// must announce before a newly configured KEK is used: replicas of a
	// release that does not announce are not seen otherwise. Once a live
	// replica writes under the configured KEK, the rollout is done and a
	// replica that dies later does not hold it back.
	ExpectedReplicas int
	// Name and Version describe this replica to the others; Name defaults
	// to the re-wrap runner's name (host name and process id).
	Name, Version string
}

// RolloutStatus is what this replica's rollout waits for; /readyz shows
// it, and `kek status` shows the same from the announcements.
type RolloutStatus struct {
	// Configured is the KEK this replica is configured to wrap with;
	// Writes the one it wraps with now.
	Configured string `json:"configured"`
	Writes     string `json:"writes"`
	// Waiting says Writes is not Configured: new wraps and the re-wrap
	// job wait for Reason.
	Waiting bool   `json:"waiting"`
	Reason  string `json:"reason,omitempty"`
	// Replicas counts the live announcements, this replica's included;
	// Blocking those that cannot open Configured.
	Replicas         int `json:"replicas"`
	Blocking         int `json:"blocking"`
	ExpectedReplicas int `json:"expectedReplicas,omitempty"`
	// BlockedBy names the replicas that cannot open Configured (host
	// names and process ids): for the log, not for the unauthenticated
	// /readyz.
	BlockedBy []string `json:"-"`
	// CheckedAt is the store's time of the last successful heartbeat;
	// nil before the first.
	CheckedAt *time.Time `json:"checkedAt,omitempty"`
}

// RolloutDecision is what a replica configured to wrap with configured,
// holding the KEKs held (configured first), does given the live
// announcements: the KEK it writes under, and why. self is its own
// replica id (its own announcement never blocks it).
func RolloutDecision(configured string, held []string, self string, live []Replica, expected int) RolloutStatus {
	st := RolloutStatus{Configured: configured, Writes: configured, Replicas: len(live), ExpectedReplicas: expected}
	var blockers []*Replica
	done := false // some live replica already writes under configured
	for i := range live {
		r := &live[i]
		if r.ID == self {
			continue
		}
		if !r.Opens(configured) {
			blockers = append(blockers, r)
		}
		if r.WritesKEK == configured {
			done = true
		}
	}
	st.Blocking = len(blockers)
	var why string
	switch {
	case len(blockers) > 0:
		for _, b := range blockers {
			st.BlockedBy = append(st.BlockedBy, b.Name)
		}
		why = fmt.Sprintf("%d live replica(s) cannot open %s", len(blockers), configured)
	case expected > 0 && len(live) < expected && !done:
		why = fmt.Sprintf("%d of %d expected replicas announce %s (KEYBROKER_ROLLOUT_REPLICAS)", len(live), expected, configured)
	default:
		return st
	}
	// The fallback: a KEK this replica holds that every other live
	// replica opens, preferably the one they write under.
	opensAll := func(id string) bool {
		for i := range live {
			if live[i].ID != self && !live[i].Opens(id) {
				return false
			}
		}
		return true
	}
	var candidates []string
	for _, id := range held {
		if id != configured && opensAll(id) {
			candidates = append(candidates, id)
		}
	}
	if len(candidates) == 0 {
		st.Reason = why + "; no KEK this replica holds opens on all of them, so it writes under " + configured
		return st
	}
	st.Writes = candidates[0]
	for i := range live {
		if live[i].ID != self && slices.Contains(candidates, live[i].WritesKEK) {
			st.Writes = live[i].WritesKEK
			break
		}
	}
	st.Waiting = true
	st.Reason = why + "; new wraps go under " + st.Writes + " and the re-wrap job waits"
	return st
}

// writeUnder makes the configured KEK id the one new wraps use; the
// configured active KEK when id is it. In cached envelope mode it is the
// remote KEK under which new data keys are made and to which the newest
// data key moves, and the data keys must be reloaded (Refresh) for it to
// take effect. It reports whether anything changed; nothing does when
// the keyring does not hold id.
func (k *Keyring) writeUnder(id string) bool {
	if k.dataKeys != nil {
		return k.dataKeys.holdAt(id)
	}
	st := k.state.Load()
	if st.active.ID() == id {
		return false
	}
	target, ok := st.byID[id]
	if !ok {
		return false
	}
	others := make([]KEK, 0, len(k.configured))
	for _, c := range k.configured {
		if c.ID() != id {
			others = append(others, c)
		}
	}
	next, err := newKeyringState(target, others)
	if err != nil {
		return false // cannot happen: the ids were unique already
	}
	k.state.Store(next)
	return true
}

// writesUnder is the configured KEK new wraps use now: in cached envelope
// mode the remote KEK of the data keys, not the data key.
func (k *Keyring) writesUnder() string {
	if k.dataKeys != nil {
		return k.dataKeys.remote().ID()
	}
	return k.ActiveID()
}

// remote is the remote KEK new data keys are made and moved under: the
// configured active one, unless the rollout holds another.
func (d *dataKeySource) remote() KEK {
	if h := d.hold.Load(); h != nil {
		return *h
	}
	return d.cfg.Active
}

// holdAt makes the configured KEK id the remote of new data keys (the
// configured active one for "" or its id), and reports whether that
// changed. An id that is not configured changes nothing.
func (d *dataKeySource) holdAt(id string) bool {
	if id == "" || id == d.cfg.Active.ID() {
		return d.hold.Swap(nil) != nil
	}
	next := d.remotes[id]
	if next == nil {
		return false
	}
	if prev := d.hold.Load(); prev != nil && (*prev).ID() == id {
		return false
	}
	d.hold.Store(&next)
	return true
}

// configuredIDs are the ids of the configured KEKs, the active one first.
func (k *Keyring) configuredIDs() []string {
	ids := make([]string, len(k.configured))
	for i, c := range k.configured {
		ids[i] = c.ID()
	}
	return ids
}

// rollout is a runtime's announcement and the decision it takes from the
// others'.
type rollout struct {
	store   ReplicaStore
	keyring *Keyring
	cfg     RolloutConfig
	id      string
	log     *slog.Logger

	// reload: a reload of the data keys for a changed decision failed.
	reload bool

	mu     sync.Mutex
	status RolloutStatus
}

func newRollout(store ReplicaStore, keyring *Keyring, cfg RolloutConfig, log *slog.Logger) *rollout {
	var raw [12]byte
	rand.Read(raw[:])
	configured := keyring.configuredIDs()[0]
	ro := &rollout{store: store, keyring: keyring, cfg: cfg, id: base64.RawURLEncoding.EncodeToString(raw[:]), log: log}
	ro.status = RolloutStatus{Configured: configured, Writes: keyring.writesUnder(), ExpectedReplicas: cfg.ExpectedReplicas,
		Reason: "no heartbeat yet"}
	return ro
}

// current returns the last decision.
func (ro *rollout) current() RolloutStatus {
	ro.mu.Lock()
	defer ro.mu.Unlock()
	return ro.status
}

// beat announces this replica, reads the others and applies the
// decision to the keyring. On a store error the last decision stands.
func (ro *rollout) beat(ctx context.Context) error {
	ids := ro.keyring.configuredIDs()
	me := Replica{ID: ro.id, Name: ro.cfg.Name, Version: ro.cfg.Version, ActiveKEK: ids[0], WritesKEK: ro.keyring.writesUnder(), KEKIDs: ids}
	if err := ro.store.ReplicaAnnounce(ctx, me, RolloutTTLBeats*ro.cfg.Heartbeat); err != nil {
		return fmt.Errorf("rollout: announce: %w", err)
	}
	live, now, err := ro.store.ReplicaList(ctx)
	if err != nil {
		return fmt.Errorf("rollout: list replicas: %w", err)
	}
	st := RolloutDecision(ids[0], ids, ro.id, live, ro.cfg.ExpectedReplicas)
	if ro.keyring.writeUnder(st.Writes) || ro.reload {
		// Cached envelope mode: the data keys move (or mint) under the
		// remote KEK at a reload. Until one succeeds, try at every beat.
		ro.reload = ro.keyring.dataKeys != nil && ro.keyring.Refresh(ctx) != nil
	}
	st.CheckedAt = &now
	ro.mu.Lock()
	prev := ro.status
	ro.status = st
	ro.mu.Unlock()
	if prev.Writes != st.Writes || prev.Waiting != st.Waiting || prev.CheckedAt == nil {
		attrs := []any{slog.String("configured_kek", st.Configured), slog.String("writes_kek", st.Writes), slog.Int("replicas", st.Replicas),
			slog.String("blocked_by", strings.Join(st.BlockedBy, ", "))}
		if st.Waiting {
			ro.log.Warn("rollout: waiting before using the configured KEK: "+st.Reason, attrs...)
		} else {
			ro.log.Info("rollout: new wraps use the configured KEK", attrs...)
		}
	}
	return nil
}

// leave removes the announcement, within a bound: a replica that stops
// cleanly stops counting at once.
func (ro *rollout) leave(ctx context.Context) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := ro.store.ReplicaLeave(ctx, ro.id); err != nil {
		ro.log.Warn("rollout: leaving: the announcement expires by itself", slog.String("error", err.Error()))
	}
}

// run renews the announcement every heartbeat until ctx ends.
func (ro *rollout) run(ctx context.Context, wait func(context.Context, time.Duration) bool) {
	for wait(ctx, ro.cfg.Heartbeat) {
		if err := ro.beat(ctx); err != nil && ctx.Err() == nil {
			ro.log.Warn("rollout heartbeat failed; the last decision stands", slog.String("error", err.Error()))
		}
	}
}

// ErrRolloutWaiting is what RuntimeConfig.OnRewrapRun is told when a
// background re-wrap run did not start because the rollout of the
// configured KEK waits for a replica that cannot open it.
var ErrRolloutWaiting = errors.New("the re-wrap job waits: a live replica cannot open the configured KEK")

// startRollout announces this replica and takes the first decision, when
// the store takes announcements and the heartbeat is on. When the first
// heartbeat fails, the keyring keeps what it was loaded with
// (KeyringConfig.Hold: RolloutHold) until a heartbeat passes.
func (r *Runtime) startRollout(ctx context.Context) {
	store, ok := r.cfg.Store.(ReplicaStore)
	if !ok || r.cfg.Rollout.Heartbeat <= 0 {
		return
	}
	r.rollout = newRollout(store, r.cfg.Keyring, r.cfg.Rollout, r.cfg.Logger)
	if err := r.rollout.beat(ctx); err != nil {
		r.cfg.Logger.Warn("rollout: first heartbeat failed; retrying", slog.String("error", err.Error()))
	}
}

// RolloutHold is KeyringConfig.Hold for a replica configured with the KEK
// ids (the active one first) that has not announced itself yet: the KEK
// the live announcements let it write under when that is not the
// configured active one, else "". A store that takes no announcements
// holds nothing; one whose announcements cannot be read holds nothing
// and returns the error (the runtime's first heartbeat decides).
func RolloutHold(ctx context.Context, store Store, ids []string, expectedReplicas int) (string, error) {
	rs, ok := store.(ReplicaStore)
	if !ok || len(ids) == 0 {
		return "", nil
	}
	live, _, err := rs.ReplicaList(ctx)
	if err != nil {
		return "", err
	}
	if st := RolloutDecision(ids[0], ids, "", live, expectedReplicas); st.Waiting {
		return st.Writes, nil
	}
	return "", nil
}

// rolloutWaits reports whether the re-wrap job must wait for the rollout.
func (r *Runtime) rolloutWaits() bool {
	return r.rollout != nil && r.rollout.current().Waiting
}

// Rollout returns what this replica's rollout waits for; nil when it
// announces nothing (the heartbeat is off, or the store serves one
// process).
func (r *Runtime) Rollout() *RolloutStatus {
	if r.rollout == nil {
		return nil
	}
	st := r.rollout.current()
	return &st
}
