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
	"github.com/keybroker/keybroker/kekproviders"
	"github.com/keybroker/keybroker/kekproviders/localkek"
	"github.com/keybroker/keybroker/migrations"
	"github.com/keybroker/keybroker/pgstore"
	"github.com/keybroker/keybroker/vaultapi"
	"github.com/keybroker/keybroker/vaultapi/jwtauth"
)

func cmdServe(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer, h *hooks) error {
	cfg, err := parseConfig("serve", args, getenv, stderr, true)
	if err != nil {
		return err
	}
	log, err := cfg.logger(stderr)
	if err != nil {
		return err
	}
	var keyring *broker.Keyring
	if cfg.Dev {
		if keyring, err = prepareDev(ctx, cfg, getenv, stderr, log); err != nil {
			return err
		}
	}
	if keyring == nil {
		if keyring, err = openKeyring(ctx, cfg, getenv, log); err != nil {
			return err
		}
	}

	store, closeStore, err := openStore(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer closeStore()
	svc, err := broker.New(ctx, broker.Config{Store: store, Keyring: keyring, Logger: log})
	if err != nil {
		return err
	}
	verifier, err := jwtauth.New(ctx, jwtauth.Config{JWKSURL: cfg.JWKSURL, Issuer: cfg.JWTIssuer, Audience: cfg.JWTAudience})
	if err != nil {
		return err
	}
	defer verifier.Close()
	api, err := vaultapi.New(vaultapi.Config{Service: svc, Verifier: verifier, Logger: log})
	if err != nil {
		return err
	}

	if err := checkActiveKEK(ctx, keyring, log); err != nil {
		return err
	}
	ln, err := listen(cfg.Addr, log) // the socket systemd passed, if any
	if err != nil {
		return err
	}
	ln = notifySystemd(ln, store, log) // READY=1, watchdog, STOPPING=1
	srv := &http.Server{
		Handler:           api.Handler(),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       15 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       120 * time.Second,
		MaxHeaderBytes:    16 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	log.Info("keybroker serving", slog.String("addr", ln.Addr().String()),
		slog.String("schema", cfg.Schema), slog.String("active_kek", keyring.ActiveID()),
		slog.Any("kek_ids", keyring.IDs()), slog.String("version", version))
	if h != nil && h.listening != nil {
		h.listening(ln.Addr().String())
	}
	return serveUntilDone(ctx, srv, ln, cfg.ShutdownTimeout, log)
}

// readyStore is a broker.Store that can tell whether it answers.
type readyStore interface {
	broker.Store
	Ping(ctx context.Context) error
}

// openStore opens the PostgreSQL store when a database URL is configured,
// applying migrations first unless disabled.
func openStore(ctx context.Context, cfg *config, log *slog.Logger) (readyStore, func(), error) {
	if cfg.DatabaseURL == "" {
		return nil, nil, fmt.Errorf("no database: set $%s to a PostgreSQL URL", envDatabaseURL)
	}
	pool, err := pgstore.OpenPool(ctx, cfg.DatabaseURL)
	if err != nil {
		return nil, nil, err
	}
	if cfg.Migrate {
		applied, err := migrations.Apply(ctx, pool, cfg.Schema)
		if err != nil {
			pool.Close()
			return nil, nil, fmt.Errorf("migrate: %w", err)
		}
		for _, name := range applied {
			log.Info("migration applied", slog.String("migration", name), slog.String("schema", cfg.Schema))
		}
	}
	store, err := pgstore.New(ctx, pgstore.Config{Pool: pool, Schema: cfg.Schema})
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

// openKeyring opens the active and decrypt-only KEKs. A missing, malformed
// or all-zero KEK stops the start unless --dev.
func openKeyring(ctx context.Context, cfg *config, getenv func(string) string, log *slog.Logger) (*broker.Keyring, error) {
	opener := kekproviders.Opener{AllowDevKeys: cfg.Dev, Getenv: getenv}
	activeURI, retiredURIs, err := cfg.kekURIs(getenv)
	if err != nil {
		return nil, err
	}
	open := func(uri string) (broker.KEK, error) {
		kek, err := opener.Open(ctx, uri)
		if err == nil && cfg.Dev {
			log.Warn("DEV MODE: insecure KEKs (the all-zero key) are accepted")
		}
		if errors.Is(err, localkek.ErrDevKey) {
			return nil, fmt.Errorf("%w.\n  Generate a real one with: keybroker kek generate\n  (or pass --dev for a throwaway local run)", err)
		}
		if err != nil {
			return nil, err
		}
		return kek, nil
	}
	active, err := open(activeURI)
	if err != nil {
		return nil, fmt.Errorf("active KEK: %w", err)
	}
	var retired []broker.KEK
	for _, uri := range retiredURIs {
		kek, err := open(uri)
		if err != nil {
			return nil, fmt.Errorf("decrypt-only KEK: %w", err)
		}
		retired = append(retired, kek)
	}
	return broker.NewKeyring(active, retired...)
}
