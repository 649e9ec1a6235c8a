package main

import (
	"io"
	"log/slog"

	"golang.org/x/term"

	"github.com/keybroker/keybroker/cmd/keybroker/internal/config"
)

// errUsage is a command line that did not parse; the usage is printed.
var errUsage = config.ErrUsage

// newLogger is the command's logger: in the configured format, or text
// on a terminal and JSON otherwise.
func newLogger(cfg config.Log, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: cfg.Level}
	// People read a terminal; log pipelines and journald parse JSON.
	if cfg.Format == "text" || (cfg.Format == "" && isTerminal(w)) {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	opts.ReplaceAttr = durationSeconds
	return slog.New(slog.NewJSONHandler(w, opts))
}

// durationSeconds writes a duration in a JSON log as seconds, a number
// (0.0125, not slog's 12500000 nanoseconds): what log pipelines sum and
// compare, and the unit of the metrics. The README says so.
func durationSeconds(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindDuration {
		return slog.Float64(a.Key, a.Value.Duration().Seconds())
	}
	return a
}

// isTerminal reports whether w is a terminal, where logs are read by a
// person rather than parsed.
func isTerminal(w io.Writer) bool {
	f, ok := w.(interface{ Fd() uintptr })
	return ok && term.IsTerminal(int(f.Fd()))
}
