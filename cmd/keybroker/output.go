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
	return slog.New(slog.NewJSONHandler(w, opts))
}

// isTerminal reports whether w is a terminal, where logs are read by a
// person rather than parsed.
func isTerminal(w io.Writer) bool {
	f, ok := w.(interface{ Fd() uintptr })
	return ok && term.IsTerminal(int(f.Fd()))
}
