package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/internal/jwtissuer"
	"github.com/keybroker/keybroker/kekproviders/file"
	"github.com/keybroker/keybroker/kekproviders/localkek"
	"github.com/keybroker/keybroker/vaultapi/jwtauth"
)

// Dev mode files in the data directory.
const (
	devKEKFile    = "dev-kek"
	devKEKID      = "dev-v1"
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

// devKEK loads the dev KEK from the data directory, generating it on the
// first run. It is random (never the all-zero key) and only its owner may
// access it, as for any file:// KEK; a file with looser permissions or the
// wrong length is refused rather than replaced, since keys wrapped by it
// would be lost.
func devKEK(dataDir string) (*localkek.KEK, error) {
	path := filepath.Join(dataDir, devKEKFile)
	kek, err := file.Open(devKEKID, path, false)
	var modeErr *file.ModeError
	switch {
	case err == nil:
		return kek, nil
	case errors.Is(err, fs.ErrNotExist):
		key := make([]byte, localkek.KeySize)
		rand.Read(key)
		err := writeFileAtomic(path, []byte(base64.StdEncoding.EncodeToString(key)+"\n"), 0o600)
		if err != nil {
			return nil, fmt.Errorf("dev KEK: %w (is %s writable? set --data-dir)", err, dataDir)
		}
		return localkek.New(devKEKID, key, false)
	case errors.As(err, &modeErr), errors.Is(err, fs.ErrPermission):
		return nil, fmt.Errorf("dev KEK: %w", err)
	default:
		return nil, fmt.Errorf("dev KEK: %w; restore it from a backup, or remove it to start over (keys it wrapped will not open)", err)
	}
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

// prepareDev applies dev mode to cfg: refuses production, picks the
// loopback address, the generated KEK and the built-in issuer.
func prepareDev(ctx context.Context, cfg *config, getenv func(string) string, stderr io.Writer, log *slog.Logger) (*broker.Keyring, error) {
	if getenv(envEnv) == "production" {
		return nil, fmt.Errorf("--dev refused: $%s is production", envEnv)
	}
	fmt.Fprint(stderr, devBanner)
	log.Warn("DEV MODE: generated KEK, built-in token issuer; never use it for real user keys")
	if !cfg.addrSet {
		cfg.Addr = "127.0.0.1:" + orDefault(getenv(envPort), "3001")
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("data directory: %w", err)
	}
	if cfg.JWKSURL == "" {
		url, err := devIssuer(ctx, cfg.DataDir, log)
		if err != nil {
			return nil, err
		}
		// The built-in issuer's tokens carry its name in iss and aud (as
		// Better Auth's carry its base URL): pin both, as production must.
		cfg.JWKSURL, cfg.JWTIssuer, cfg.JWTAudience = url, devIssuerName, devIssuerName
	}
	if _, _, err := cfg.kekURIs(getenv); errors.Is(err, errNoKEK) {
		kek, err := devKEK(cfg.DataDir)
		if err != nil {
			return nil, err
		}
		return broker.NewKeyring(kek)
	}
	return nil, nil // an explicitly configured KEK; openKeyring opens it
}

func orDefault(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

const devUsage = `Usage:
  keybroker dev token --user ID [--ttl 1h] [--data-dir DIR]
      print a bearer token for ID from the dev-mode issuer
`

func cmdDev(_ context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "token" {
		fmt.Fprint(stderr, devUsage)
		return errUsage
	}
	fs := flag.NewFlagSet("keybroker dev token", flag.ContinueOnError)
	fs.SetOutput(stderr)
	user := fs.String("user", "", "user id (the token's sub)")
	ttl := fs.Duration("ttl", time.Hour, "token lifetime")
	dataDir := fs.String("data-dir", orDefault(getenv(envDataDir), defaultDataDir), "data directory of the dev server ($"+envDataDir+")")
	if err := fs.Parse(args[1:]); err != nil {
		return errUsage
	}
	if *user == "" {
		fmt.Fprint(stderr, devUsage)
		return errUsage
	}
	if getenv(envEnv) == "production" {
		return fmt.Errorf("dev token refused: $%s is production", envEnv)
	}
	issuer, err := jwtissuer.LoadOrCreate(filepath.Join(*dataDir, devIssuerFile), devIssuerName)
	if err != nil {
		return fmt.Errorf("dev issuer: %w", err)
	}
	if *ttl > jwtauth.DefaultMaxLifetime {
		fmt.Fprintf(stderr, "note: a server refuses tokens that live longer than its $%s (default %s)\n", envJWTMaxLifetime, jwtauth.DefaultMaxLifetime)
	}
	now := time.Now()
	tok, err := issuer.Mint(jwtissuer.Claims{Subject: *user, IssuedAt: now, Expiry: now.Add(*ttl)})
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, tok)
	return nil
}
