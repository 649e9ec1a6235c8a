package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/keybroker/keybroker/cmd/keybroker/internal/config"
	"github.com/keybroker/keybroker/pgstore"
	"github.com/keybroker/keybroker/sqlitestore"
)

// storeExists refuses an operator command pointed at no store: without a
// database URL, the data directory must hold the embedded store serve
// made. An operator command never creates one (it would report on an
// empty store, 0 rows, as if all were well).
func storeExists(cfg *config.Config) error {
	if cfg.Store.DatabaseURL != "" {
		return nil
	}
	path := sqlitePath(cfg.Store.DataDir)
	_, err := os.Stat(path)
	switch {
	case err == nil:
		return nil
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf(`no store to read: %s is not set, and there is no embedded store at %s.
  Point the command at the store serve uses: set %s to its PostgreSQL URL,
  or %s to the data directory serve runs with (it holds %s)`,
			config.Name("database-url"), path, config.Name("database-url"), config.Name("data-dir"), sqlitestore.FileName)
	default:
		return fmt.Errorf("the embedded store %s: %w", path, err)
	}
}

// sqlitePath is the embedded store of a data directory, absolute.
func sqlitePath(dataDir string) string {
	if abs, err := filepath.Abs(dataDir); err == nil {
		dataDir = abs
	}
	return filepath.Join(dataDir, sqlitestore.FileName)
}

// storeName says which store a command reads, for its "store:" line:
// "postgres://user@host:5432/db schema keybroker" or "sqlite <path>".
// It holds no password.
func storeName(cfg *config.Config) string {
	if cfg.Store.DatabaseURL == "" {
		return "sqlite " + sqlitePath(cfg.Store.DataDir)
	}
	pc, err := pgxpool.ParseConfig(cfg.Store.DatabaseURL)
	if err != nil {
		return pgstore.RedactURL(cfg.Store.DatabaseURL) + " schema " + cfg.Store.Schema
	}
	c := pc.ConnConfig
	if strings.HasPrefix(c.Host, "/") {
		return fmt.Sprintf("postgres://%s@/%s?host=%s schema %s", c.User, c.Database, c.Host, cfg.Store.Schema)
	}
	return fmt.Sprintf("postgres://%s@%s:%d/%s schema %s", c.User, c.Host, c.Port, c.Database, cfg.Store.Schema)
}

// logConnectionBudget logs how the server's connections are shared out
// and warns when the budget is tight: a second replica, or the new
// process of a rolling restart, may find the server full. A server that
// does not answer is left to the checks that follow.
func logConnectionBudget(ctx context.Context, pool *pgxpool.Pool, log *slog.Logger) {
	b, err := pgstore.ReadConnectionBudget(ctx, pool)
	if err != nil {
		log.Warn("cannot read max_connections", slog.String("error", err.Error()))
		return
	}
	attrs := []any{slog.Int("pool", b.Pool), slog.Int("max_connections", b.MaxConnections), slog.Int("reserved", b.Reserved),
		slog.Int("open", b.Open), slog.Int("room_for_replicas", b.Replicas())}
	msg := fmt.Sprintf("database connections: pool %d per replica; max_connections %d (%d reserved); room for %d replicas",
		b.Pool, b.MaxConnections, b.Reserved, b.Replicas())
	if !b.Tight() {
		log.Info(msg, attrs...)
		return
	}
	log.Warn(msg+fmt.Sprintf("; TIGHT: %d connections are open elsewhere. Count every replica, and the extra one a rolling update starts: "+
		"if they can need more than %d connections together, lower %s or raise max_connections",
		b.Others(), b.Available(), config.Name("db-pool-size")), attrs...)
}

// openToolStore is openStore for an operator command, which says on
// stderr which store it read: an operator pointed at the wrong one sees
// it at once.
func openToolStore(ctx context.Context, cfg *config.Config, log *slog.Logger, stderr io.Writer) (readyStore, func(), error) {
	store, closeStore, err := openStore(ctx, cfg, log)
	if err != nil {
		return nil, nil, err
	}
	fmt.Fprintln(stderr, "store:", storeName(cfg))
	return store, closeStore, nil
}

// openKEKsAndStore opens the configured KEKs and then the store, as the
// operator commands that need both do; close releases both.
func openKEKsAndStore(ctx context.Context, cfg *config.Config, getenv func(string) string, log *slog.Logger, stderr io.Writer) (*openedKEKs, readyStore, func(), error) {
	keks, err := openKEKs(ctx, cfg.KEKs, getenv, log)
	if err != nil {
		return nil, nil, nil, err
	}
	store, closeStore, err := openToolStore(ctx, cfg, log, stderr)
	if err != nil {
		keks.close()
		return nil, nil, nil, err
	}
	return keks, store, func() { closeStore(); keks.close() }, nil
}
