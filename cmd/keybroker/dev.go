package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/keybroker/keybroker/cmd/keybroker/internal/config"
	"github.com/keybroker/keybroker/internal/jwtissuer"
	"github.com/keybroker/keybroker/kekproviders/localkek"
	"github.com/keybroker/keybroker/vaultapi/jwtauth"
)

// The built-in issuer of dev mode, in the data directory.
const (
	devIssuerFile = "dev-issuer.json"
	devIssuerName = "keybroker-dev"
)

const devBanner = `
  ┌──────────────────────────────────────────────────────────────────┐
  │ keybroker DEV MODE — a generated KEK and a built-in token issuer. │
  │ Never use it for real user keys. Get a token with:                │
  │   keybroker dev token --user alice                                │
  └──────────────────────────────────────────────────────────────────┘
`

// ensureDevKEK generates the dev KEK the first time: random (never the
// all-zero key) and readable by its owner only, as any file:// KEK must
// be. An existing file is left as it is — opening it refuses looser
// permissions or the wrong length rather than replacing it, since keys
// wrapped by it would be lost.
func ensureDevKEK(path, dataDir string) error {
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		return nil // there, or unreadable: opening it says which
	}
	key := make([]byte, localkek.KeySize)
	rand.Read(key)
	defer clear(key)
	if err := writeFileAtomic(path, []byte(base64.StdEncoding.EncodeToString(key)+"\n"), 0o600); err != nil {
		return fmt.Errorf("dev KEK: %w (is %s writable? set --data-dir)", err, dataDir)
	}
	return nil
}

// writeFileAtomic writes data to a temporary file, syncs it and renames
// it into place, so a crash never leaves a truncated key.
func writeFileAtomic(path string, data []byte, perm fs.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(perm); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// devIssuer loads (or creates) the built-in EdDSA issuer and serves its
// JWKS on a loopback listener that the server's own verifier fetches.
func devIssuer(ctx context.Context, dataDir string, log *slog.Logger) (jwksURL string, err error) {
	issuer, err := jwtissuer.LoadOrCreate(filepath.Join(dataDir, devIssuerFile), devIssuerName)
	if err != nil {
		return "", fmt.Errorf("dev issuer: %w", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("dev issuer: %w", err)
	}
	srv := &http.Server{Handler: issuer.JWKSHandler(), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	url := "http://" + ln.Addr().String() + "/jwks.json"
	log.Info("dev issuer", slog.String("jwks_url", url), slog.String("issuer", devIssuerName))
	return url, nil
}

// prepareDev generates dev mode's inputs: the data directory, the
// built-in issuer (unless a JWKS URL is configured), whose values become
// the configured token settings, and the dev KEK (unless a KEK is
// configured), which then opens as any file:// KEK does.
func prepareDev(ctx context.Context, cfg *config.Config, stderr io.Writer, log *slog.Logger) error {
	fmt.Fprint(stderr, devBanner)
	log.Warn("DEV MODE: generated KEK, built-in token issuer; never use it for real user keys")
	if err := os.MkdirAll(cfg.Store.DataDir, 0o700); err != nil {
		return fmt.Errorf("data directory: %w", err)
	}
	if cfg.Tokens.JWKSURL == "" {
		url, err := devIssuer(ctx, cfg.Store.DataDir, log)
		if err != nil {
			return err
		}
		// The built-in issuer's tokens carry its name in iss and aud (as
		// Better Auth's carry its base URL): pin both, as production must.
		cfg.Tokens.UseIssuer(url, devIssuerName)
	}
	if cfg.KEKs.Active.Dev {
		return ensureDevKEK(cfg.DevKEKPath(), cfg.Store.DataDir)
	}
	return nil
}

const devTokenUsage = `Usage: keybroker dev token --user ID [--ttl 1h] [--data-dir DIR]

Prints a bearer token for ID from the issuer of dev mode (serve --dev,
make run), whose key is in the data directory. Refused when
$KEYBROKER_ENV=production.

Flags:
`

// cmdDevToken is "keybroker dev token".
func cmdDevToken(_ context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cfg, err := config.Resolve(config.DevToken, args, getenv, stderr, devTokenUsage)
	if err != nil {
		return err
	}
	if cfg.Tool.User == "" {
		fmt.Fprint(stderr, "keybroker dev token: --user is required\n\n"+devTokenUsage)
		config.PrintFlags(stderr, config.DevToken)
		return errUsage
	}
	issuer, err := jwtissuer.LoadOrCreate(filepath.Join(cfg.Store.DataDir, devIssuerFile), devIssuerName)
	if err != nil {
		return fmt.Errorf("dev issuer: %w", err)
	}
	if cfg.Tool.TTL > jwtauth.DefaultMaxLifetime {
		fmt.Fprintf(stderr, "note: a server refuses tokens that live longer than its %s (default %s)\n", config.Name("jwt-max-lifetime"), jwtauth.DefaultMaxLifetime)
	}
	now := time.Now()
	tok, err := issuer.Mint(jwtissuer.Claims{Subject: cfg.Tool.User, IssuedAt: now, Expiry: now.Add(cfg.Tool.TTL)})
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, tok)
	return nil
}
