package main

import (
	"context"
	"fmt"
	"io"

	"github.com/keybroker/keybroker/cmd/keybroker/internal/config"
	"github.com/keybroker/keybroker/migrations"
	"github.com/keybroker/keybroker/pgstore"
	"github.com/keybroker/keybroker/sqlitestore"
)

func cmdMigrate(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cfg, err := config.Resolve(config.Migrate, args, getenv, stderr, "")
	if err != nil {
		return err
	}
	// migrate creates the embedded store only where it is told to: an
	// explicit data directory. Otherwise it migrates the one that exists.
	if cfg.Store.DatabaseURL == "" && !cfg.Set("data-dir") {
		if err := storeExists(cfg); err != nil {
			return err
		}
	}
	fmt.Fprintln(stderr, "store:", storeName(cfg))
	if cfg.Store.DatabaseURL == "" {
		store, err := sqlitestore.Open(ctx, sqlitestore.Config{Dir: cfg.Store.DataDir})
		if err != nil {
			return err
		}
		defer store.Close()
		if len(store.Migrated()) == 0 {
			fmt.Fprintf(stdout, "%s is up to date\n", store.Path())
		}
		for _, name := range store.Migrated() {
			fmt.Fprintf(stdout, "applied %s to %s\n", name, store.Path())
		}
		return nil
	}
	log := newLogger(cfg.Log, stderr)
	pool, err := pgstore.OpenPool(ctx, cfg.Store.DatabaseURL)
	if err != nil {
		return fmt.Errorf("%s: %w", config.Name("database-url"), err)
	}
	defer pool.Close()
	if err := checkDBRole(ctx, pool, cfg.Store, log); err != nil {
		return err
	}
	applied, err := migrations.Apply(ctx, pool, cfg.Store.Schema)
	if err != nil {
		return fmt.Errorf("migrate: %w", pgstore.ExplainMigrateError(ctx, pool, cfg.Store.Schema, err))
	}
	if len(applied) == 0 {
		fmt.Fprintf(stdout, "schema %s is up to date\n", cfg.Store.Schema)
	}
	for _, name := range applied {
		fmt.Fprintf(stdout, "applied %s to schema %s\n", name, cfg.Store.Schema)
	}
	return nil
}
