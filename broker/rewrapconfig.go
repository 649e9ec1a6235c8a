package broker

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"time"
)

// What the re-wrap job is configured with and what it reports (the job
// itself is in rewrap.go).

// RewrapQuery selects candidate rows of the re-wrap job.
type RewrapQuery struct {
	// ActiveKEKID is the KEK new wraps use. Rows under another id, or in
	// format 1, are listed.
	ActiveKEKID string
	// OnActiveKEK lists the other rows instead: those already under
	// ActiveKEKID in format 2 (the key-version sweep reads them).
	OnActiveKEK bool
	// LegacyOnly lists only the rows in format 1, whatever their KEK id
	// (the job moves them first). Not set with OnActiveKEK.
	LegacyOnly bool
	// After is the last user id of the previous page; "" starts over.
	After string
	// Limit caps the page.
	Limit int
}

// KEKCount is the number of rows with one KEK id, format and mode.
type KEKCount struct {
	KEKID         string
	FormatVersion int
	// Wrapped says the server holds a wrap of these rows; false for
	// zero-knowledge rows, whose KEK id is a leftover that opens nothing.
	Wrapped       bool
	ZeroKnowledge bool
	Rows          int64
}

// RewrapSwap is the move of one row.
type RewrapSwap struct {
	Old   *Vault // the row as read
	New   *Vault // Old with the new wrap (and key check value)
	Audit *AuditEntry
}

// RewrapState is what `kek status` shows about the job.
type RewrapState struct {
	// Running says a runner holds the lock now.
	Running bool
	// Runner names the current or last runner; empty when none ever ran.
	Runner string
	RewrapProgress
}

// Sentinel errors of the re-wrap job.
var (
	// ErrRewrapBusy means another runner holds the job's lock.
	ErrRewrapBusy = errors.New("another keybroker is running the re-wrap job")
	// ErrRewrapLockLost means the runner's lock died under it (its
	// database connection was cut); the run stopped and another runner
	// may have taken over.
	ErrRewrapLockLost = errors.New("the re-wrap job lost its lock")
)

// RewrapProgress is a snapshot of a run.
type RewrapProgress struct {
	// ActiveKEKID is the KEK rows are moved to.
	ActiveKEKID string
	// Total is the number of rows to move when the run started.
	Total int64
	// Done counts rows moved (in a dry run: rows that would move).
	Done int64
	// ServerRewrapped counts rows moved to the active KEK's newest key
	// version by the backend (included in Done).
	ServerRewrapped int64
	// Skipped counts rows a user changed (rotated, re-wrapped, switched to
	// zero-knowledge) between read and write: left as the user made them.
	Skipped int64
	// Failed counts rows that could not be moved (an unknown KEK id, a
	// wrap that does not open); they stay as they are.
	Failed        int64
	StartedAt     time.Time
	UpdatedAt     time.Time
	Finished      bool
	RowsPerSecond float64
	// Error is why the run stopped early; empty while it runs and when it
	// finished.
	Error string
}

// Processed is the number of rows the run has dealt with.
func (p RewrapProgress) Processed() int64 { return p.Done + p.Skipped + p.Failed }

// ETA estimates the time left from the run's average rate; zero when
// done or unknown.
func (p RewrapProgress) ETA() time.Duration {
	left := p.Total - p.Processed()
	if left <= 0 || p.RowsPerSecond <= 0 || p.Finished {
		return 0
	}
	return time.Duration(float64(left) / p.RowsPerSecond * float64(time.Second))
}

// RewrapFailure is a row the job could not move.
type RewrapFailure struct {
	UserID string
	KEKID  string
	Err    error
}

// RewrapResult is the outcome of one run.
type RewrapResult struct {
	RewrapProgress
	// Failures lists failed rows, at most maxReportedFailures of them.
	Failures []RewrapFailure
	// Format1 is the format-1 closure after the run; nil when the run did
	// not get that far.
	Format1 *Format1State
	// Format1ClosedNow says this run closed format 1.
	Format1ClosedNow bool
	// DataKeysDeleted lists the data keys the run deleted (cached
	// envelope mode): older ones no row needed any more.
	DataKeysDeleted []string
}

// RewrapConfig configures a RewrapJob.
type RewrapConfig struct {
	// Store is required; when it is a RewrapLocker, runs of different
	// processes take turns.
	Store   Store
	Keyring *Keyring
	// BatchSize is the number of rows per transaction; default
	// DefaultRewrapBatchSize.
	BatchSize int
	// RowsPerSecond limits the pace; zero means no limit.
	RowsPerSecond float64
	// Concurrency is the number of rows whose KEK calls run at once
	// within a batch; default 8. Remote KEKs gain from it.
	Concurrency int
	// DryRun reads and unwraps every candidate, and writes nothing: it
	// reports how many rows would move and which would fail.
	DryRun bool
	// Runner names this runner in status; default "keybroker".
	Runner string
	// Progress, when set, is called after every batch (from the goroutine
	// that called Run).
	Progress func(RewrapProgress)
	// Logger receives per-row failures (user and KEK ids, never key
	// material); default slog.Default().
	Logger *slog.Logger
	// Now is the clock; default time.Now.
	Now func() time.Time
	// DataKeyGrace is how long after a newer data key was made an old one
	// stays, even with no row left under it; default DefaultDataKeyGrace.
	// Replicas that have not reloaded their data keys since still wrap
	// under the old one; past the grace they normally have. (One that has
	// not, say because its reload failed, has its write refused by the
	// store and retried under the newest: see DataKeyDeleter.)
	DataKeyGrace time.Duration
	// AuditSeal, when it holds a key, MACs the job's audit rows
	// (docs/audit.md).
	AuditSeal *AuditSeal
}

// DefaultDataKeyGrace is three times KeyringRefreshInterval: replicas
// have normally reloaded their data keys by then.
const DefaultDataKeyGrace = 3 * KeyringRefreshInterval

// DefaultRewrapBatchSize is the batch size when none is configured: large
// enough that per-transaction costs vanish, small enough that a batch's
// transaction is short.
const DefaultRewrapBatchSize = 1000

// MaxRewrapBatchSize is the largest RewrapConfig.BatchSize: a batch is
// one transaction, and a larger one holds its row locks for too long.
const MaxRewrapBatchSize = 10000

const (
	maxRewrapPasses     = 8
	maxReportedFailures = 100
)

func (c *RewrapConfig) validate() error {
	if c.Store == nil {
		return errors.New("broker: RewrapConfig.Store is required")
	}
	if c.Keyring == nil {
		return errors.New("broker: RewrapConfig.Keyring is required")
	}
	if c.BatchSize == 0 {
		c.BatchSize = DefaultRewrapBatchSize
	}
	if c.BatchSize < 1 || c.BatchSize > MaxRewrapBatchSize {
		return fmt.Errorf("broker: RewrapConfig.BatchSize must be between 1 and %d", MaxRewrapBatchSize)
	}
	if c.RowsPerSecond < 0 || math.IsNaN(c.RowsPerSecond) || math.IsInf(c.RowsPerSecond, 0) {
		return errors.New("broker: RewrapConfig.RowsPerSecond must be a positive number, or zero for no limit")
	}
	if c.RowsPerSecond > 0 && c.RowsPerSecond < float64(c.BatchSize) {
		// A batch must fit in the limiter's burst, and small batches keep
		// a slow run's progress smooth.
		c.BatchSize = max(1, int(c.RowsPerSecond))
	}
	if c.Concurrency == 0 {
		c.Concurrency = 8
	}
	if c.Concurrency < 1 {
		return errors.New("broker: RewrapConfig.Concurrency must be at least 1")
	}
	if c.Runner == "" {
		c.Runner = "keybroker"
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.DataKeyGrace == 0 {
		c.DataKeyGrace = DefaultDataKeyGrace
	}
	if c.DataKeyGrace < 0 {
		return errors.New("broker: RewrapConfig.DataKeyGrace must not be negative")
	}
	return nil
}
