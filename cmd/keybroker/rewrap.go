package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/keybroker/keybroker/broker"
)

// The re-wrap job's wiring: its serve settings, the background loop in
// serve, the start-up check that no retired KEK still wraps rows, and the
// `keybroker rewrap` command.

// Environment of the re-wrap job in serve.
const (
	envRewrap         = "KEYBROKER_REWRAP"
	envRewrapInterval = "KEYBROKER_REWRAP_INTERVAL"
	envRewrapBatch    = "KEYBROKER_REWRAP_BATCH"
	envRewrapRate     = "KEYBROKER_REWRAP_RATE"
)

// rewrapConfig is serve's re-wrap settings.
type rewrapConfig struct {
	Enabled  bool
	Interval time.Duration
	Batch    int
	Rate     float64
}

// register adds serve's re-wrap flags, each defaulting to its variable.
func (r *rewrapConfig) register(fs *flag.FlagSet, getenv func(string) string) error {
	env := func(k, def string) string {
		if v := getenv(k); v != "" {
			return v
		}
		return def
	}
	enabled, err := strconv.ParseBool(env(envRewrap, "true"))
	if err != nil {
		return fmt.Errorf("$%s: %w", envRewrap, err)
	}
	interval, err := time.ParseDuration(env(envRewrapInterval, "1m"))
	if err != nil {
		return fmt.Errorf("$%s: %w", envRewrapInterval, err)
	}
	batch, err := strconv.Atoi(env(envRewrapBatch, strconv.Itoa(broker.DefaultRewrapBatchSize)))
	if err != nil {
		return fmt.Errorf("$%s: %w", envRewrapBatch, err)
	}
	rate, err := strconv.ParseFloat(env(envRewrapRate, "1000"), 64)
	if err != nil {
		return fmt.Errorf("$%s: %w", envRewrapRate, err)
	}
	fs.BoolVar(&r.Enabled, "rewrap", enabled, "run the re-wrap job in the background: moves rows off decrypt-only KEKs and format 1 ($"+envRewrap+")")
	fs.DurationVar(&r.Interval, "rewrap-interval", interval, "how often a replica looks for rows to re-wrap, or takes over from a runner that died ($"+envRewrapInterval+")")
	fs.IntVar(&r.Batch, "rewrap-batch", batch, "rows per re-wrap transaction ($"+envRewrapBatch+")")
	fs.Float64Var(&r.Rate, "rewrap-rate", rate, "re-wrap rows per second at most, 0 for no limit ($"+envRewrapRate+")")
	return nil
}

func (r *rewrapConfig) validate() error {
	switch {
	case r.Interval < time.Second:
		return fmt.Errorf("--rewrap-interval ($%s) must be at least 1s", envRewrapInterval)
	case r.Batch < 1:
		return fmt.Errorf("--rewrap-batch ($%s) must be at least 1", envRewrapBatch)
	case r.Rate < 0:
		return fmt.Errorf("--rewrap-rate ($%s) must not be negative", envRewrapRate)
	}
	return nil
}

// checkRetiredKEKs refuses to start when rows are still wrapped by a KEK
// that is no longer configured: they would not open. A keyring whose data
// keys are not loaded yet (a KMS outage at start) cannot tell a data key
// from a retired KEK, so the check waits for the next start then.
func checkRetiredKEKs(ctx context.Context, store broker.Store, keyring *broker.Keyring, log *slog.Logger) error {
	if err := keyring.Ready(); err != nil {
		log.Warn("not checking for rows of retired KEKs: the keyring is not ready", slog.String("error", err.Error()))
		return nil
	}
	err := broker.CheckKeyringCoversRows(ctx, store, keyring)
	var retired *broker.RetiredKEKError
	if errors.As(err, &retired) {
		return fmt.Errorf("%w.\n  Keep each as a decrypt-only KEK ($%s) until the re-wrap job has moved its rows:\n  \"keybroker kek status\" shows 0 rows for it when it can go",
			retired, envKEKRetired)
	}
	if err != nil {
		return fmt.Errorf("checking for rows of retired KEKs: %w", err)
	}
	return nil
}

// startRewrap runs the re-wrap job in the background until ctx ends or
// the returned stop is called (which waits for it). Every replica runs the
// loop; the store's lock lets one of them work at a time, and another
// takes over within an interval when that one dies.
func startRewrap(ctx context.Context, cfg rewrapConfig, store broker.Store, keyring *broker.Keyring, log *slog.Logger, h *hooks) (stop func()) {
	if !cfg.Enabled {
		log.Info("re-wrap job disabled")
		return func() {}
	}
	host, _ := os.Hostname()
	job, err := broker.NewRewrapJob(broker.RewrapConfig{Store: store, Keyring: keyring, BatchSize: cfg.Batch,
		RowsPerSecond: cfg.Rate, Runner: fmt.Sprintf("%s pid %d", host, os.Getpid()), Logger: log,
		Now: h.clock(), DataKeyGrace: dataKeyGrace})
	if err != nil {
		log.Error("re-wrap job not started", slog.String("error", err.Error()))
		return func() {}
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		timer := time.NewTimer(0)
		defer timer.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-timer.C:
			}
			res, err := job.Run(ctx)
			logRewrapRun(ctx, log, res, err)
			if h != nil && h.rewrapRun != nil {
				h.rewrapRun(res, err)
			}
			timer.Reset(cfg.Interval)
		}
	}()
	return func() {
		cancel()
		<-done
	}
}

func logRewrapRun(ctx context.Context, log *slog.Logger, res *broker.RewrapResult, err error) {
	switch {
	case errors.Is(err, broker.ErrRewrapBusy):
		log.Debug("re-wrap job runs on another replica")
		return
	case ctx.Err() != nil:
		return
	case res == nil:
		log.Warn("re-wrap job failed", slog.String("error", err.Error()))
		return
	}
	attrs := []slog.Attr{slog.String("active_kek", res.ActiveKEKID), slog.Int64("moved", res.Done),
		slog.Int64("server_rewrapped", res.ServerRewrapped), slog.Int64("skipped", res.Skipped),
		slog.Int64("failed", res.Failed), slog.Float64("rows_per_second", res.RowsPerSecond)}
	if len(res.DataKeysDeleted) > 0 {
		attrs = append(attrs, slog.Any("data_keys_deleted", res.DataKeysDeleted))
	}
	switch {
	case err != nil:
		log.LogAttrs(ctx, slog.LevelWarn, "re-wrap job stopped; it resumes at its next run", append(attrs, slog.String("error", err.Error()))...)
	case res.Failed > 0:
		log.LogAttrs(ctx, slog.LevelError, "re-wrap job left rows it cannot move", attrs...)
	case res.Done > 0 || len(res.DataKeysDeleted) > 0:
		log.LogAttrs(ctx, slog.LevelInfo, "re-wrap job finished", attrs...)
	}
}

const rewrapUsage = `Usage: keybroker rewrap [flags]

Moves every row off decrypt-only KEKs (and the legacy format 1, first)
to the active KEK, the way serve's background job does, and exits; once
no format-1 row is left it closes format 1 for good. Safe while
servers run: it takes the same lock, so it waits for no one and refuses
to run next to another runner. Kill it at any time and run it again.

Flags (each also read from the environment variable serve uses):
`

// cmdRewrap is `keybroker rewrap`.
func cmdRewrap(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	var dryRun bool
	var batch, concurrency int
	var rate float64
	var every time.Duration
	cfg, err := parseToolConfig("rewrap", rewrapUsage, args, getenv, stderr, func(fs *flag.FlagSet) {
		fs.BoolVar(&dryRun, "dry-run", false, "unwrap every row that would move, write nothing, report what would move and fail")
		fs.IntVar(&batch, "batch", broker.DefaultRewrapBatchSize, "rows per transaction")
		fs.Float64Var(&rate, "rate", 0, "rows per second at most; 0 for no limit")
		fs.IntVar(&concurrency, "concurrency", 8, "rows whose KEK calls run at once (helps remote KEKs)")
		fs.DurationVar(&every, "progress-every", 5*time.Second, "when stderr is not a terminal: a progress line at most this often (0: every batch)")
	})
	if err != nil {
		return err
	}
	log, err := cfg.logger(stderr)
	if err != nil {
		return err
	}
	keks, err := openKEKs(ctx, cfg, getenv, log)
	if err != nil {
		return err
	}
	defer keks.close()
	store, closeStore, err := openStore(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer closeStore()
	keyring, err := keks.keyring(ctx, store, log, 0, time.Now)
	if err != nil {
		return err
	}
	if err := keyring.Ready(); err != nil {
		return fmt.Errorf("the keyring is not ready: %w", err)
	}
	bar := newProgressPrinter(stderr, isTerminal(stderr), every, dryRun)
	host, _ := os.Hostname()
	job, err := broker.NewRewrapJob(broker.RewrapConfig{Store: store, Keyring: keyring, BatchSize: batch, RowsPerSecond: rate,
		Concurrency: concurrency, DryRun: dryRun, Runner: fmt.Sprintf("%s pid %d (keybroker rewrap)", host, os.Getpid()),
		Progress: bar.update, Logger: log, DataKeyGrace: dataKeyGrace})
	if err != nil {
		return err
	}
	res, err := job.Run(ctx)
	bar.finish()
	if errors.Is(err, broker.ErrRewrapBusy) {
		return fmt.Errorf("%w; see \"keybroker kek status\"", err)
	}
	if res != nil {
		printRewrapResult(stdout, res, dryRun)
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

// parseToolConfig parses the flags of the operator commands that reach the
// store and the KEKs (rewrap, kek status, kek check): serve's store, KEK and
// log settings, from the same environment variables, plus the command's
// own flags. It never migrates: an operator command does not change the
// schema behind the servers' backs.
func parseToolConfig(name, usage string, args []string, getenv func(string) string, stderr io.Writer, own func(*flag.FlagSet)) (*config, error) {
	c := &config{}
	fs := flag.NewFlagSet("keybroker "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
	}
	env := func(k, def string) string {
		if v := getenv(k); v != "" {
			return v
		}
		return def
	}
	fs.StringVar(&c.DatabaseURL, "database-url", env(envDatabaseURL, ""), "PostgreSQL URL ($"+envDatabaseURL+")")
	fs.StringVar(&c.DataDir, "data-dir", env(envDataDir, defaultDataDir), "directory of the embedded store ($"+envDataDir+")")
	fs.StringVar(&c.Schema, "schema", env(envSchema, "keybroker"), "database schema ($"+envSchema+")")
	fs.StringVar(&c.KEK, "kek", env(envKEK, ""), "active KEK URI ($"+envKEK+")")
	fs.StringVar(&c.KEKID, "kek-id", env(envKEKID, ""), "id of the active KEK, if not in its URI ($"+envKEKID+")")
	fs.StringVar(&c.KEKRetired, "kek-retired", env(envKEKRetired, ""), "decrypt-only KEK URIs ($"+envKEKRetired+")")
	fs.BoolVar(&c.Dev, "dev", false, "accept the all-zero dev KEK")
	fs.StringVar(&c.LogLevel, "log-level", env(envLogLevel, "warn"), "debug, info, warn or error ($"+envLogLevel+")")
	fs.StringVar(&c.LogFormat, "log-format", env(envLogFormat, "text"), "json or text ($"+envLogFormat+")")
	if err := c.registerAllowPrivileged(fs, getenv); err != nil {
		return nil, err
	}
	if own != nil {
		own(fs)
	}
	if err := fs.Parse(args); err != nil {
		return nil, errUsage
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if c.Schema == "" {
		return nil, fmt.Errorf("$%s must not be empty", envSchema)
	}
	return c, nil
}
