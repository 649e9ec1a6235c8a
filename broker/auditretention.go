package broker

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"
)

// AuditUpkeepInterval is how often a server runs the audit table's
// upkeep (AuditKeeper): partitions are kept AuditPartitionsAhead days
// ahead, so a server may miss many runs before a row has nowhere to go.
const AuditUpkeepInterval = time.Hour

// MinAuditRetention is the shortest AuditSchedule.Retention other than 0
// (keep every row): PostgreSQL drops whole days.
const MinAuditRetention = 24 * time.Hour

// AuditKeeper is an optional Store ability: the audit table's upkeep and
// its status. PostgreSQL partitions the table by day (created_at), moves
// an unpartitioned table over online, creates partitions ahead and drops
// whole partitions past the retention; SQLite deletes rows past the
// retention in small batches.
type AuditKeeper interface {
	// AuditUpkeep runs one pass of the upkeep as of p.Now. A store shared
	// by replicas lets one of them work at a time and reports Busy to the
	// others.
	AuditUpkeep(ctx context.Context, p AuditUpkeepParams) (*AuditUpkeepResult, error)
	// AuditStatus reports the rows, the oldest and newest row, the
	// partitions and the last upkeep run.
	AuditStatus(ctx context.Context) (*AuditStatus, error)
}

// AuditUpkeepParams is one upkeep pass.
type AuditUpkeepParams struct {
	Now time.Time
	// Retention: rows older than Now-Retention go (PostgreSQL: whole
	// partitions that end before it). 0 keeps every row.
	Retention time.Duration
	// Runner names the replica in the store's record of the last run.
	Runner string
}

// AuditUpkeepResult is what one pass did.
type AuditUpkeepResult struct {
	// Busy: another replica holds the upkeep's lock; nothing was done.
	Busy bool
	// Moved: the unpartitioned table became a partition of a new
	// partitioned table in this pass.
	Moved bool
	// Created and Dropped name the partitions created and dropped.
	Created, Dropped []string
	// Deleted counts the rows removed: a dropped partition's estimate
	// (PostgreSQL) or the rows deleted (SQLite).
	Deleted int64
}

// AuditStatus describes the audit table.
type AuditStatus struct {
	// Rows is the number of rows; an estimate from the planner's
	// statistics when RowsEstimated (PostgreSQL: counting 100 million
	// rows takes minutes).
	Rows          int64
	RowsEstimated bool
	// Oldest and Newest are the created_at of the oldest and newest row;
	// nil when the table is empty or they are unknown (a PostgreSQL table
	// not moved yet: its policies hide rows from every role).
	Oldest, Newest *time.Time
	// Bytes is the size on disk, indexes included.
	Bytes int64
	// Partitioned: the table is partitioned (PostgreSQL, once moved).
	Partitioned bool
	Partitions  []AuditPartition
	// The last upkeep run; LastRun is nil before the first.
	LastRun    *time.Time
	LastRunner string
	LastError  string
	// Dropped and Deleted are the totals of every upkeep run.
	Dropped, Deleted int64
}

// AuditPartition is one partition of the audit table: rows created in
// [From, To). From is nil for the first (it holds everything older);
// both are nil for the default partition, which takes the rows no other
// one does (a clock far off).
type AuditPartition struct {
	Name     string
	From, To *time.Time
	Default  bool
	Rows     int64 // estimate
	Bytes    int64
}

// AuditSchedule is the audit upkeep of a server; every replica runs it,
// the store lets one work at a time.
type AuditSchedule struct {
	// Retention is AuditUpkeepParams.Retention: 0 keeps every row.
	Retention time.Duration
	// Every is the pause between runs; 0 means AuditUpkeepInterval.
	Every time.Duration
	// OnRun, when set, is called after each run.
	OnRun func(*AuditUpkeepResult, error)
}

// auditUpkeeper runs AuditKeeper.AuditUpkeep on the runtime's clock.
type auditUpkeeper struct {
	keeper AuditKeeper
	cfg    AuditSchedule
	runner string
	now    func() time.Time
	log    *slog.Logger
	// mark records, under the audit key, that rows before a time may be
	// gone (MarkAuditRetention), so that audit verify takes their drop
	// for retention, not for tampering; nil when the audit trail is not
	// sealed.
	mark func(ctx context.Context, before, now time.Time) error

	mu   sync.Mutex
	last AuditUpkeepStats
}

// AuditUpkeepStats are the totals of this process's upkeep runs, for
// metrics.
type AuditUpkeepStats struct {
	Runs, Failures, Busy     int64
	Created, Dropped         int64
	Deleted                  int64
	LastSuccess, LastFailure time.Time
}

// AuditUpkeepStats returns the totals of the upkeep runs so far; zero
// when the store has no AuditKeeper.
func (r *Runtime) AuditUpkeepStats() AuditUpkeepStats {
	if r.audit == nil {
		return AuditUpkeepStats{}
	}
	r.audit.mu.Lock()
	defer r.audit.mu.Unlock()
	return r.audit.last
}

// loop runs the upkeep at once, then every interval, until ctx ends.
func (u *auditUpkeeper) loop(ctx context.Context, wait func(context.Context, time.Duration) bool) {
	every := u.cfg.Every
	if every <= 0 {
		every = AuditUpkeepInterval
	}
	for {
		u.run(ctx)
		if !wait(ctx, every) {
			return
		}
	}
}

func (u *auditUpkeeper) run(ctx context.Context) {
	now := u.now()
	retention := u.cfg.Retention
	if retention > 0 && u.mark != nil {
		// Nothing sealed is dropped unrecorded: without the mark, the
		// pass keeps every row and tries again next time.
		if err := u.mark(ctx, now.Add(-retention), now); err != nil {
			u.log.Warn("audit retention postponed: its mark could not be recorded", slog.String("error", err.Error()))
			retention = 0
		}
	}
	res, err := u.keeper.AuditUpkeep(ctx, AuditUpkeepParams{Now: now, Retention: retention, Runner: u.runner})
	u.mu.Lock()
	u.last.Runs++
	switch {
	case err != nil:
		u.last.Failures++
		u.last.LastFailure = time.Now()
	case res.Busy:
		u.last.Busy++
	default:
		u.last.LastSuccess = time.Now()
		u.last.Created += int64(len(res.Created))
		u.last.Dropped += int64(len(res.Dropped))
		u.last.Deleted += res.Deleted
	}
	u.mu.Unlock()
	switch {
	case err != nil:
		if ctx.Err() == nil {
			u.log.Error("audit upkeep failed", slog.String("error", err.Error()))
		}
	case res.Busy:
		u.log.Debug("audit upkeep: another replica is running it")
	case res.Moved || len(res.Created) > 0 || len(res.Dropped) > 0 || res.Deleted > 0:
		u.log.Info("audit upkeep", slog.Bool("moved", res.Moved), slog.Any("created", res.Created),
			slog.Any("dropped", res.Dropped), slog.Int64("rows_removed", res.Deleted))
	}
	if u.cfg.OnRun != nil {
		u.cfg.OnRun(res, err)
	}
}

// errNoAuditKey: the audit key has not loaded yet (a KEK outage at start).
var errNoAuditKey = errors.New("the audit key is not loaded yet")

// retentionMarker returns the mark function of an upkeeper: nil when the
// audit trail is not sealed (no AuditSeal, or a store that keeps no
// marks).
func retentionMarker(seal *AuditSeal, store Store) func(ctx context.Context, before, now time.Time) error {
	marks, ok := store.(AuditMarkStore)
	if seal == nil || !ok {
		return nil
	}
	return func(ctx context.Context, before, now time.Time) error {
		key := seal.Key()
		if key == nil {
			return errNoAuditKey
		}
		return MarkAuditRetention(ctx, marks, key, before, now)
	}
}
