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
	"github.com/keybroker/keybroker/sqlitestore"
	"github.com/keybroker/keybroker/vaultapi"
	"github.com/keybroker/keybroker/vaultapi/jwtauth"
)

func cmdServe(ctx context.Context, args []string, getenv func(string) string, stderr io.Writer, h *hooks) error {
	// What serve starts in the background (the dev issuer, the keyring
	// refresh, the readiness poller) lives on ctx: cancelling it when serve
	// returns, on an error too, stops all of it.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
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
	// KEKs first: a missing or bad KEK is the most common deploy mistake,
	// and its message should not hide behind a database error.
	var keks *openedKEKs
	if keyring == nil {
		if keks, err = openKEKs(ctx, cfg, getenv, log); err != nil {
			return err
		}
		defer keks.close()
	}
	ops, err := newOps(cfg.Ops, log) // metrics, readiness, CORS, TLS: ops.go
	if err != nil {
		return err
	}
	if keks != nil {
		keks.metrics = ops.kek // the keyring reports its KEK calls to it
	}
	grants, err := openGrants(cfg.Grants, getenv, ops.registry, log) // a bad recipient key refuses the start: grants.go
	if err != nil {
		return err
	}
	store, closeStore, err := openStore(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer closeStore()
	if keyring == nil {
		if keyring, err = keks.keyring(ctx, store, log, cfg.DataKeyMaxAge, h.clock()); err != nil {
			return err
		}
	}
	go refreshKeyring(ctx, keyring, log)
	if err := checkRetiredKEKs(ctx, store, keyring, log); err != nil { // rewrap.go
		return err
	}
	svc, err := broker.New(ctx, broker.Config{Store: store, Keyring: keyring, Logger: log, OnGroupCommit: ops.commits.observe,
		RecoveryProof: broker.RecoveryProofPolicy(cfg.RecoveryProof), GrantRecipients: grants.recipients, OnGrant: grants.observe})
	if err != nil {
		return err
	}
	if cfg.RecoveryProof == string(broker.RecoveryProofOptional) {
		log.Warn("recovery proof optional: a bearer token alone can replace a zero-knowledge recovery wrap; the replaced wrap is kept for \"keybroker vault restore-recovery\"",
			slog.String("setting", envRecoveryProof))
	}
	cfg.warnUnpinned(log)
	verifier, err := jwtauth.New(ctx, jwtauth.Config{
		JWKSURL: cfg.JWKSURL, Issuer: cfg.JWTIssuer, Audience: cfg.JWTAudience,
		MaxLifetime: cfg.JWTMaxLifetime, Leeway: cfg.JWTLeeway,
	})
	if err != nil {
		return err
	}
	defer verifier.Close()
	apiCfg, err := ops.apiConfig(vaultapi.Config{Service: svc, Verifier: verifier, Logger: log}, store, keyring, keks, verifier)
	if err != nil {
		return err
	}
	api, err := vaultapi.New(apiCfg)
	if err != nil {
		return err
	}

	kekOK, err := checkActiveKEK(ctx, keyring, log) // refuses a misconfigured KEK
	if err != nil {
		return err
	}
	ln, err := listen(cfg.Addr, log) // the socket systemd passed, if any
	if err != nil {
		return err
	}
	ln = notifySystemd(ln, store, kekOK, log) // READY=1, watchdog, STOPPING=1
	srv := newHTTPServer(api.Handler(), log)
	if ln, err = serveTLS(ctx, cfg.Ops, srv, ln, log); err != nil {
		return err
	}
	if err := ops.listenMetrics(); err != nil {
		ln.Close()
		return err
	}
	ops.start(ctx) // readiness polls, the metrics listener
	// The background re-wrap job (rewrap.go); serve waits for it to stop.
	defer startRewrap(ctx, cfg.Rewrap, store, keyring, log, h)()
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
// refusing a role that row-level security does not bind (checkDBRole) and
// applying migrations first unless disabled, and otherwise the embedded
// SQLite store in the data directory (which migrates itself on open).
func openStore(ctx context.Context, cfg *config, log *slog.Logger) (readyStore, func(), error) {
	if cfg.DatabaseURL == "" {
		store, err := sqlitestore.Open(ctx, sqlitestore.Config{Dir: cfg.DataDir})
		if err != nil {
			return nil, nil, err
		}
		for _, name := range store.Migrated() {
			log.Info("migration applied", slog.String("migration", name), slog.String("store", store.Path()))
		}
		log.Info("embedded store", slog.String("path", store.Path()))
		return store, func() { _ = store.Close() }, nil
	}
	pool, err := pgstore.OpenPool(ctx, cfg.DatabaseURL)
	if err != nil {
		return nil, nil, err
	}
	if err := checkDBRole(ctx, pool, cfg, log); err != nil {
		pool.Close()
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

// openedKEKs are the configured KEKs, opened.
type openedKEKs struct {
	active  broker.KEK
	retired []broker.KEK
	cached  []string          // ids in cached envelope mode
	schemes map[string]string // each id's URI scheme: its provider in the metrics
	metrics *kekMetrics       // set by serve: the keyring measures every KEK call
}

// close closes KEKs that hold resources (connections, token renewers).
func (o *openedKEKs) close() {
	for _, k := range append([]broker.KEK{o.active}, o.retired...) {
		if c, ok := k.(io.Closer); ok {
			_ = c.Close()
		}
	}
}

// openKEKs opens the active and decrypt-only KEKs. A missing, malformed
// or all-zero KEK stops the start unless --dev. Remote KEKs are in cached
// envelope mode unless their URI says cache=off.
func openKEKs(ctx context.Context, cfg *config, getenv func(string) string, log *slog.Logger) (*openedKEKs, error) {
	opener := kekproviders.Opener{AllowDevKeys: cfg.Dev, Getenv: getenv}
	activeURI, retiredURIs, err := cfg.kekURIs(getenv)
	if err != nil {
		return nil, err
	}
	o := &openedKEKs{schemes: map[string]string{}}
	open := func(uri string) (broker.KEK, error) {
		parsed, err := kekproviders.ParseURI(uri)
		if err != nil {
			return nil, err
		}
		kek, err := opener.Open(ctx, uri)
		if errors.Is(err, localkek.ErrDevKey) {
			return nil, fmt.Errorf("%w.\n  Generate a real one with: keybroker kek generate\n  (or pass --dev for a throwaway local run)", err)
		}
		if err != nil {
			return nil, err
		}
		if cfg.Dev {
			log.Warn("DEV MODE: insecure KEKs (the all-zero key) are accepted")
		}
		o.schemes[parsed.ID] = parsed.Scheme
		if parsed.Cached {
			o.cached = append(o.cached, parsed.ID)
		}
		return kek, nil
	}
	if o.active, err = open(activeURI); err != nil {
		o.close()
		return nil, fmt.Errorf("active KEK: %w", err)
	}
	for _, uri := range retiredURIs {
		kek, err := open(uri)
		if err != nil {
			o.close()
			return nil, fmt.Errorf("decrypt-only KEK: %w", err)
		}
		o.retired = append(o.retired, kek)
	}
	return o, nil
}

// keyring builds the keyring over the store's data keys. serve passes a
// maximum data-key age; the operator commands pass 0 and never rotate by
// age.
func (o *openedKEKs) keyring(ctx context.Context, store broker.Store, log *slog.Logger, dataKeyMaxAge time.Duration, now func() time.Time) (*broker.Keyring, error) {
	newLocal := func(id string, key []byte) (broker.KEK, error) {
		local, err := localkek.New(id, key, false)
		if err != nil {
			return nil, err
		}
		return local, nil
	}
	kcfg := broker.KeyringConfig{Active: o.active, DecryptOnly: o.retired, Cached: o.cached, Logger: log, NewLocalKEK: newLocal,
		DataKeys: store, DataKeyMaxAge: dataKeyMaxAge, Now: now}
	if o.metrics != nil {
		kcfg.OnKEKCall = o.observeKEKCall
	}
	// Data keys are loaded even when no KEK is cached, so rows written in
	// cached mode keep opening after a URI switches to cache=off.
	return broker.LoadKeyring(ctx, kcfg)
}

// keyringRefreshInterval is how often cached data keys are reloaded: the
// delay after which a revoked KMS key stops fetches, after which a data
// key another replica made is used for new wraps, after which a replica
// mints a data key past its maximum age, and after which a deleted data
// key is zeroed in this replica's memory.
const keyringRefreshInterval = 5 * time.Minute

// dataKeyGrace is how long the re-wrap job keeps an old data key no row
// needs after a newer one was made: three reload intervals, so that
// replicas have normally moved to the newer one. One that has not has its
// writes refused by the store and retried (broker.DataKeyDeleter).
const dataKeyGrace = 3 * keyringRefreshInterval

// refreshKeyring reloads the keyring's data keys until ctx ends. Until
// they load it retries every few seconds, so a replica that started
// during a KMS outage becomes ready by itself.
func refreshKeyring(ctx context.Context, keyring *broker.Keyring, log *slog.Logger) {
	for {
		wait := keyringRefreshInterval
		if keyring.Ready() != nil {
			wait = 5 * time.Second
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		if err := keyring.Refresh(ctx); err != nil {
			log.Warn("keyring refresh failed", slog.String("error", err.Error()))
		}
	}
}
