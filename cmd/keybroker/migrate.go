package main

import (
	"context"
	"fmt"
	"io"

	"github.com/keybroker/keybroker/migrations"
	"github.com/keybroker/keybroker/pgstore"
	"github.com/keybroker/keybroker/sqlitestore"
)

func cmdMigrate(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cfg, err := parseConfig("migrate", args, getenv, stderr, false)
	if err != nil {
		return err
	}
	if cfg.DatabaseURL == "" {
		store, err := sqlitestore.Open(ctx, sqlitestore.Config{Dir: cfg.DataDir})
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
	log, err := cfg.logger(stderr)
	if err != nil {
		return err
	}
	pool, err := pgstore.OpenPool(ctx, cfg.DatabaseURL)
	if err != nil {
		return err
	}
	defer pool.Close()
	if err := checkDBRole(ctx, pool, cfg, log); err != nil {
		return err
	}
	applied, err := migrations.Apply(ctx, pool, cfg.Schema)
	if err != nil {
		return fmt.Errorf("migrate: %w", err)
	}
	if len(applied) == 0 {
		fmt.Fprintf(stdout, "schema %s is up to date\n", cfg.Schema)
	}
	for _, name := range applied {
		fmt.Fprintf(stdout, "applied %s to schema %s\n", name, cfg.Schema)
	}
	return nil
}
