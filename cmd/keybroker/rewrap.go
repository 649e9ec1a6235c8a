package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/cmd/keybroker/internal/config"
)

// `keybroker rewrap`: the re-wrap job run once, with a progress bar.

const rewrapUsage = `Usage: keybroker rewrap [flags]

Moves every row off decrypt-only KEKs (and the legacy format 1, first)
to the active KEK, the way serve's background job does, and exits; once
no format-1 row is left it closes format 1 for good. Safe while
servers run: it takes the same lock, so it waits for no one and refuses
to run next to another runner. Kill it at any time and run it again.
On PostgreSQL it refuses (but --dry-run) while a live server announces
that it cannot open the active KEK: rows moved to it would answer 503
there ("keybroker kek status" names it).

Flags (those that serve's environment variables also set name them):
`

// cmdRewrap is `keybroker rewrap`.
func cmdRewrap(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cfg, err := config.Resolve(config.Rewrap, args, getenv, stderr, rewrapUsage)
	if err != nil {
		return err
	}
	log := newLogger(cfg.Log, stderr)
	keks, store, closeAll, err := openKEKsAndStore(ctx, cfg, getenv, log, stderr)
	if err != nil {
		return err
	}
	defer closeAll()
	if !cfg.Tool.DryRun && cfg.Rollout.Heartbeat > 0 {
		if err := checkNoReplicaStranded(ctx, store, cfg.KEKs.Active.ID, log); err != nil {
			return err
		}
	}
	keks.rollout = &cfg.Rollout // with the heartbeat off, the keyring holds nothing either
	keyring, err := keks.keyring(ctx, store, log, 0, time.Now)
	if err != nil {
		return err
	}
	if err := keyring.Ready(); err != nil {
		return fmt.Errorf("the keyring is not ready: %w", err)
	}
	// Its audit rows carry a MAC like a server's (docs/audit.md); without
	// the key they are written without one and sealed late.
	auditSeal := &broker.AuditSeal{}
	if sealStore, ok := store.(broker.AuditSealStore); ok && !cfg.Tool.DryRun {
		if key, err := broker.LoadAuditKey(ctx, sealStore, keyring); err != nil {
			log.Warn("audit key not loaded: the re-wrap's audit rows carry no MAC", slog.String("error", err.Error()))
		} else {
			auditSeal.SetKey(key)
		}
	}
	opts := cfg.Tool
	bar := newProgressPrinter(stderr, isTerminal(stderr), opts.ProgressEvery, opts.DryRun)
	host, _ := os.Hostname()
	job, err := broker.NewRewrapJob(broker.RewrapConfig{Store: store, Keyring: keyring, BatchSize: opts.Batch, RowsPerSecond: opts.Rate,
		Concurrency: opts.Concurrency, DryRun: opts.DryRun, Runner: fmt.Sprintf("%s pid %d (keybroker rewrap)", host, os.Getpid()),
		Progress: bar.update, Logger: log, AuditSeal: auditSeal})
	if err != nil {
		return err
	}
	res, err := job.Run(ctx)
	bar.finish()
	if errors.Is(err, broker.ErrRewrapBusy) {
		return fmt.Errorf("%w; see \"keybroker kek status\"", err)
	}
	if res != nil {
		printRewrapResult(stdout, res, opts.DryRun)
	}
	if err != nil {
		return fmt.Errorf("stopped, run it again to resume: %w", err)
	}
	if res.Failed > 0 {
		return fmt.Errorf("%d rows could not be moved (listed above); they stay as they are", res.Failed)
	}
	return nil
}

func printRewrapResult(w io.Writer, res *broker.RewrapResult, dryRun bool) {
	verb := "moved"
	if dryRun {
		verb = "would move"
	}
	fmt.Fprintf(w, "%s %s rows to KEK %s (format 2)", verb, formatCount(res.Done), res.ActiveKEKID)
	if res.ServerRewrapped > 0 {
		fmt.Fprintf(w, ", %s of them re-wrapped by the KMS under its newest key version", formatCount(res.ServerRewrapped))
	}
	fmt.Fprintf(w, "; %s skipped (changed by their user meanwhile), %s failed, %.0f rows/s\n",
		formatCount(res.Skipped), formatCount(res.Failed), res.RowsPerSecond)
	for _, f := range res.Failures {
		fmt.Fprintf(w, "  not moved: user %s, KEK %s: %v\n", f.UserID, f.KEKID, f.Err)
	}
	if int64(len(res.Failures)) < res.Failed {
		fmt.Fprintf(w, "  … and %d more (see the log)\n", res.Failed-int64(len(res.Failures)))
	}
	for _, id := range res.DataKeysDeleted {
		fmt.Fprintf(w, "deleted data key %s: no row needs it any more\n", id)
	}
	switch f := res.Format1; {
	case f == nil:
	case res.Format1ClosedNow:
		fmt.Fprintln(w, "no format-1 row is left: format 1 is now closed for good, a format-1 wrap no longer opens")
	case !f.Closed && dryRun:
		fmt.Fprintln(w, "format 1 is open; a run that leaves no format-1 row closes it for good")
	case !f.Closed:
		fmt.Fprintln(w, "format 1 stays open: rows with a format-1 server wrap are left (see \"keybroker kek status\")")
	}
}

// progressPrinter draws the job's progress: a bar redrawn in place on a
// terminal, plain lines at most every `every` otherwise (logs, CI).
type progressPrinter struct {
	w       io.Writer
	tty     bool
	every   time.Duration
	dryRun  bool
	mu      sync.Mutex
	last    time.Time
	drawn   bool
	pending *broker.RewrapProgress
}

func newProgressPrinter(w io.Writer, tty bool, every time.Duration, dryRun bool) *progressPrinter {
	return &progressPrinter{w: w, tty: tty, every: every, dryRun: dryRun}
}

// update is the job's Progress callback.
func (p *progressPrinter) update(pr broker.RewrapProgress) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := time.Now()
	every := p.every
	if p.tty {
		every = 100 * time.Millisecond // redraws, not lines: keep the terminal calm
	}
	if !p.last.IsZero() && now.Sub(p.last) < every {
		p.pending = &pr
		return
	}
	p.last, p.pending = now, nil
	p.draw(pr)
}

// finish draws the last state and ends the bar's line.
func (p *progressPrinter) finish() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.pending != nil {
		p.draw(*p.pending)
		p.pending = nil
	}
	if p.tty && p.drawn {
		fmt.Fprintln(p.w)
	}
}

func (p *progressPrinter) draw(pr broker.RewrapProgress) {
	done := pr.Processed()
	pct := 100.0
	if pr.Total > 0 {
		pct = min(100, 100*float64(done)/float64(pr.Total))
	}
	eta := "--"
	if d := pr.ETA(); d > 0 {
		eta = d.Round(time.Second).String()
	}
	verb := "re-wrapped"
	if p.dryRun {
		verb = "checked"
	}
	stats := fmt.Sprintf("%5.1f%%  %s/%s rows %s  %s rows/s  ETA %s", pct, formatCount(done), formatCount(pr.Total), verb,
		formatCount(int64(pr.RowsPerSecond)), eta)
	if pr.Failed > 0 {
		stats += fmt.Sprintf("  %s failed", formatCount(pr.Failed))
	}
	if !p.tty {
		fmt.Fprintf(p.w, "rewrap: %s\n", stats)
		return
	}
	const width = 30
	filled := int(pct / 100 * width)
	bar := strings.Repeat("=", filled) + strings.Repeat(" ", width-filled)
	if filled > 0 && filled < width {
		bar = strings.Repeat("=", filled-1) + ">" + strings.Repeat(" ", width-filled)
	}
	// \r and "erase to end of line" redraw the bar in place.
	fmt.Fprintf(p.w, "\r\x1b[K[%s] %s", bar, stats)
	p.drawn = true
}

// formatCount writes n with thousands separators: 1,234,567.
func formatCount(n int64) string {
	s := strconv.FormatInt(n, 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, r := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(r)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}
