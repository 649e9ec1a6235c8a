package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/cmd/keybroker/internal/config"
	"github.com/keybroker/keybroker/migrations"
	"github.com/keybroker/keybroker/pgstore"
	"github.com/keybroker/keybroker/sqlitestore"
	"github.com/keybroker/keybroker/vaultapi"
	"github.com/keybroker/keybroker/vaultapi/jwtauth"
)

func cmdServe(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer, h *hooks) error {
	// What serve starts in the background (the dev issuer, the runtime,
	// the readiness poller) lives on ctx: cancelling it when serve
	// returns, on an error too, stops all of it.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cfg, err := config.Resolve(config.Serve, args, getenv, stderr, "")
	if err != nil {
		return err
	}
	log := newLogger(cfg.Log, stderr)
	if cfg.Dev {
		// Dev mode generates its inputs — a KEK file, an issuer — and
		// then starts as any configuration does.
		if err := prepareDev(ctx, cfg, stderr, log); err != nil {
			return err
		}
	}
	// KEKs first: a missing or bad KEK is the most common deploy mistake,
	// and its message should not hide behind a database error.
	keks, err := openKEKs(ctx, cfg.KEKs, getenv, log)
	if err != nil {
		return err
	}
	defer keks.close()
	ops, err := newOps(cfg.Ops, log) // metrics, readiness, CORS, TLS: ops.go
	if err != nil {
		return err
	}
	keks.metrics = ops.kek                                   // the keyring reports its KEK calls to it
	keks.rollout = &cfg.Rollout                              // the keyring waits for the other replicas
	grants, err := openGrants(cfg.Grants, ops.registry, log) // a bad recipient key refuses the start: grants.go
	if err != nil {
		return err
	}
	store, closeStore, err := openStore(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer closeStore()
	keyring, err := keks.keyring(ctx, store, log, cfg.DataKeyMaxAge, h.clock())
	if err != nil {
		return err
	}
	auditSeal := &broker.AuditSeal{}
	rc := runtimeConfig(cfg, store, keyring, log, h)
	rc.AuditSeal, rc.AuditSealEvery = auditSeal, cfg.AuditSealInterval
	rt, err := broker.NewRuntime(ctx, rc)
	if err != nil {
		return explainRetiredKEKs(err)
	}
	defer rt.Close() // before the store closes: a re-wrap run stops first
	svc, err := broker.New(ctx, broker.Config{Store: store, Keyring: keyring, Logger: log, OnGroupCommit: ops.commits.observe,
		RecoveryProof: cfg.RecoveryProof, GrantRecipients: grants.recipients, OnGrant: grants.observe, AuditSeal: auditSeal})
	if err != nil {
		return err
	}
	if cfg.RecoveryProof == broker.RecoveryProofOptional {
		log.Warn("recovery proof optional: a bearer token alone can replace a zero-knowledge recovery wrap; the replaced wrap is kept for \"keybroker vault restore-recovery\"",
			slog.String("setting", config.Env("recovery-proof")))
	}
	warnUnpinned(cfg.Tokens, log)
	verifier, err := jwtauth.New(ctx, jwtauth.Config{
		JWKSURL: cfg.Tokens.JWKSURL, Issuer: cfg.Tokens.Issuer, Audience: cfg.Tokens.Audience,
		MaxLifetime: cfg.Tokens.MaxLifetime, Leeway: cfg.Tokens.Leeway,
	})
	var jwksErr *jwtauth.JWKSError
	if errors.As(err, &jwksErr) {
		// A 404 or a web page: a mistake in the URL, not an outage.
		return fmt.Errorf("%s: %w", config.Name("jwks-url"), err)
	}
	if err != nil {
		return err
	}
	defer verifier.Close()
	apiCfg, err := ops.apiConfig(vaultapi.Config{Service: svc, Verifier: verifier, Logger: log}, store, rt, verifier)
	if err != nil {
		return err
	}
	api, err := vaultapi.New(apiCfg)
	if err != nil {
		return err
	}

	ln, err := listen(cfg.Server.Addr, log) // the socket systemd passed, if any
	if err != nil {
		return err
	}
	ln = notifySystemd(ln, store, rt.KEKChecked(), log) // READY=1 once the KEK check passed, watchdog, STOPPING=1
	srv := newHTTPServer(api.Handler(), log)
	if ln, err = serveTLS(ctx, cfg.Ops, srv, ln, log); err != nil {
		return err
	}
	if err := ops.listenMetrics(); err != nil {
		ln.Close()
		return err
	}
	rt.Start(ctx)  // keyring refresh, re-wrap job, audit upkeep, row counts
	ops.start(ctx) // readiness polls, the metrics listener
	log.Info("keybroker serving", slog.String("addr", ln.Addr().String()),
		slog.String("schema", cfg.Store.Schema), slog.String("active_kek", keyring.ActiveID()),
		slog.Any("kek_ids", keyring.IDs()), slog.String("version", version))
	if h != nil && h.listening != nil {
		h.listening(ln.Addr().String())
	}
	return serveUntilDone(ctx, srv, ln, cfg.Server.ShutdownTimeout, log)
}

// rowsInterval is how often serve counts the rows per KEK id for
// /metrics.
const rowsInterval = time.Minute

// runtimeConfig is the runtime of serve's configuration.
func runtimeConfig(cfg *config.Config, store broker.Store, keyring *broker.Keyring, log *slog.Logger, h *hooks) broker.RuntimeConfig {
	rc := broker.RuntimeConfig{Store: store, Keyring: keyring, Logger: log, Now: h.clock(), CountRowsEvery: rowsInterval,
		Rewrap: broker.RewrapSchedule{Enabled: cfg.Rewrap.Enabled, Interval: cfg.Rewrap.Interval,
			BatchSize: cfg.Rewrap.Batch, RowsPerSecond: cfg.Rewrap.Rate},
		Rollout: broker.RolloutConfig{Heartbeat: cfg.Rollout.Heartbeat, ExpectedReplicas: cfg.Rollout.Replicas, Version: version},
		Audit:   broker.AuditSchedule{Retention: cfg.AuditRetention}}
	if h != nil {
		rc.OnRewrapRun = h.rewrapRun
	}
	return rc
}

// explainRetiredKEKs says how to keep the rows of a retired KEK opening.
func explainRetiredKEKs(err error) error {
	var retired *broker.RetiredKEKError
	if errors.As(err, &retired) {
		return fmt.Errorf("%w.\n  Keep each as a decrypt-only KEK (%s) until the re-wrap job has moved its rows:\n  \"keybroker kek status\" shows 0 rows for it when it can go",
			retired, config.Name("kek-retired"))
	}
	return err
}

// warnUnpinned logs, loudly, each claim that tokens are not checked for.
func warnUnpinned(t config.Tokens, log *slog.Logger) {
	if t.Issuer == "" {
		log.Warn("TOKENS NOT PINNED: tokens from any issuer behind this JWKS are accepted; set "+config.Env("jwt-issuer"), slog.Bool("jwt_unpinned", t.Unpinned))
	}
	if t.Audience == "" {
		log.Warn("TOKENS NOT PINNED: tokens the issuer signed for any audience are accepted; set "+config.Env("jwt-audience"), slog.Bool("jwt_unpinned", t.Unpinned))
	}
}

// readyStore is a broker.Store that can tell whether it answers.
type readyStore interface {
	broker.Store
	Ping(ctx context.Context) error
}

// openStore opens the PostgreSQL store when a database URL is configured,
// refusing a role that row-level security does not bind (checkDBRole) and
// applying migrations first unless disabled, and otherwise the embedded
// SQLite store in the data directory (which migrates itself on open).
// Only serve creates an embedded store: the operator commands refuse a
// data directory without one (errNoStore).
func openStore(ctx context.Context, cfg *config.Config, log *slog.Logger) (readyStore, func(), error) {
	if cfg.Command != config.Serve {
		if err := storeExists(cfg); err != nil {
			return nil, nil, err
		}
	}
	if cfg.Store.DatabaseURL == "" {
		store, err := sqlitestore.Open(ctx, sqlitestore.Config{Dir: cfg.Store.DataDir})
		if err != nil {
			return nil, nil, err
		}
		for _, name := range store.Migrated() {
			log.Info("migration applied", slog.String("migration", name), slog.String("store", store.Path()))
		}
		log.Info("embedded store", slog.String("path", store.Path()))
		return store, func() { _ = store.Close() }, nil
	}
	pool, err := pgstore.NewPool(ctx, pgstore.PoolConfig{URL: cfg.Store.DatabaseURL, MaxConns: cfg.Store.PoolSize})
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", config.Name("database-url"), err)
	}
	if err := checkDBRole(ctx, pool, cfg.Store, log); err != nil {
		pool.Close()
		return nil, nil, err
	}
	if cfg.Command == config.Serve {
		logConnectionBudget(ctx, pool, log)
	}
	if cfg.Store.Migrate {
		applied, err := migrations.Apply(ctx, pool, cfg.Store.Schema)
		if err != nil {
			pool.Close()
			return nil, nil, fmt.Errorf("migrate: %w", pgstore.ExplainMigrateError(ctx, pool, cfg.Store.Schema, err))
		}
		for _, name := range applied {
			log.Info("migration applied", slog.String("migration", name), slog.String("schema", cfg.Store.Schema))
		}
	}
	store, err := pgstore.New(ctx, pgstore.Config{Pool: pool, Schema: cfg.Store.Schema})
	if err != nil {
		pool.Close()
		return nil, nil, err
	}
	return store, pool.Close, nil
}

// serveUntilDone serves until ctx ends (SIGTERM), then lets in-flight
// requests finish within the grace period.
func serveUntilDone(ctx context.Context, srv *http.Server, ln net.Listener, grace time.Duration, log *slog.Logger) error {
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("http server: %w", err)
	case <-ctx.Done():
	}
	log.Info("shutting down", slog.Duration("grace", grace))
	sctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	log.Info("stopped")
	return nil
}
