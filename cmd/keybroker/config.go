package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/kekproviders"
	"github.com/keybroker/keybroker/vaultapi/jwtauth"
)

// config is everything serve and migrate read from flags and the
// environment. Each flag's default comes from its environment variable.
type config struct {
	Addr            string
	DatabaseURL     string
	Schema          string
	KEK             string
	KEKID           string
	KEKRetired      string
	JWKSURL         string
	JWTIssuer       string
	JWTAudience     string
	JWTUnpinned     bool          // the documented opt-out of pinning iss and aud
	JWTMaxLifetime  time.Duration // the longest token lifetime accepted
	JWTLeeway       time.Duration // the clock skew tolerated on exp, nbf, iat
	Migrate         bool
	AllowPrivileged bool // connect even as a role RLS does not bind (tests only; checkDBRole)
	Dev             bool
	DataDir         string
	addrSet         bool // --addr or $KEYBROKER_ADDR given explicitly
	LogLevel        string
	LogFormat       string
	ShutdownTimeout time.Duration
	RecoveryProof   string        // a broker.RecoveryProofPolicy, checked by parseConfig
	DataKeyMaxAge   time.Duration // 0: data keys rotate only on demand
	Ops             opsConfig     // serve's operations settings (ops.go)
	Rewrap          rewrapConfig  // serve's re-wrap job (rewrap.go)
	Grants          grantConfig   // serve's mission grant recipients (grants.go)
}

// env names, one place.
const (
	envPort            = "PORT"
	envAddr            = "KEYBROKER_ADDR"
	envDatabaseURL     = "DATABASE_URL"
	envSchema          = "KEYBROKER_SCHEMA"
	envKEK             = "KEYBROKER_KEK"
	envKEKID           = "KEYBROKER_KEK_ID"
	envKEKRetired      = "KEYBROKER_KEK_RETIRED"
	envJWKSURL         = "KEYBROKER_JWKS_URL"
	envJWTIssuer       = "KEYBROKER_JWT_ISSUER"
	envJWTAudience     = "KEYBROKER_JWT_AUDIENCE"
	envJWTUnpinned     = "KEYBROKER_JWT_UNPINNED"
	envJWTMaxLifetime  = "KEYBROKER_JWT_MAX_LIFETIME"
	envJWTLeeway       = "KEYBROKER_JWT_LEEWAY"
	envMigrate         = "KEYBROKER_MIGRATE"
	envLogLevel        = "KEYBROKER_LOG_LEVEL"
	envLogFormat       = "KEYBROKER_LOG_FORMAT"
	envShutdownTimeout = "KEYBROKER_SHUTDOWN_TIMEOUT"
	envDataDir         = "KEYBROKER_DATA_DIR"
	envEnv             = "KEYBROKER_ENV"
	envAllowPrivileged = "KEYBROKER_ALLOW_PRIVILEGED_DB_ROLE"
	envRecoveryProof   = "KEYBROKER_RECOVERY_PROOF"
	envDataKeyMaxAge   = "KEYBROKER_DATA_KEY_MAX_AGE"
)

// defaultDataKeyMaxAge is how long a data key of cached envelope mode
// wraps new rows before a replica mints the next one. Every data key's
// plaintext sits in every replica's memory; rotating it bounds how long a
// key that leaked unnoticed (a core dump, a heap snapshot) opens the rows
// stored after the leak, and the old key is deleted once the re-wrap job
// has moved its rows. 90 days is the shortest automatic rotation period
// AWS KMS offers for its own keys and a common cryptoperiod policy; it
// costs one KMS call per replica and one pass of local re-wraps (about
// 16,000 rows/s) per quarter.
const defaultDataKeyMaxAge = 90 * 24 * time.Hour

// defaultDataDir holds the embedded store and dev-mode files.
const defaultDataDir = "./.keybroker"

// parseConfig reads flags (for serve: all; for migrate: the store ones)
// over environment defaults and validates once.
func parseConfig(name string, args []string, getenv func(string) string, stderr io.Writer, serve bool) (*config, error) {
	c := &config{}
	fs := flag.NewFlagSet("keybroker "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	env := func(k, def string) string {
		if v := getenv(k); v != "" {
			return v
		}
		return def
	}
	defaultAddr := ":" + env(envPort, "3001")
	fs.StringVar(&c.DatabaseURL, "database-url", env(envDatabaseURL, ""), "PostgreSQL URL; without one the embedded SQLite store in --data-dir is used ($"+envDatabaseURL+")")
	fs.StringVar(&c.DataDir, "data-dir", env(envDataDir, defaultDataDir), "directory of the embedded store and of dev-mode files ($"+envDataDir+")")
	fs.StringVar(&c.Schema, "schema", env(envSchema, "keybroker"), "database schema; \"auth\" adopts the original service's tables ($"+envSchema+")")
	fs.StringVar(&c.LogLevel, "log-level", env(envLogLevel, "info"), "debug, info, warn or error ($"+envLogLevel+")")
	fs.StringVar(&c.LogFormat, "log-format", env(envLogFormat, ""), "json or text; default text on a terminal, json otherwise ($"+envLogFormat+")")
	if err := c.registerAllowPrivileged(fs, getenv); err != nil {
		return nil, err
	}
	if serve {
		fs.StringVar(&c.Addr, "addr", env(envAddr, defaultAddr), "listen address ($"+envAddr+", or :$"+envPort+")")
		fs.StringVar(&c.KEK, "kek", env(envKEK, ""), "active KEK URI, e.g. env://MANA_AUTH_KEK or file:///etc/keybroker/kek?id=file-2026 ($"+envKEK+")")
		fs.StringVar(&c.KEKID, "kek-id", env(envKEKID, ""), "id of the active KEK, if not in its URI ($"+envKEKID+")")
		fs.StringVar(&c.KEKRetired, "kek-retired", env(envKEKRetired, ""), "decrypt-only KEK URIs, separated by spaces or commas ($"+envKEKRetired+")")
		fs.StringVar(&c.JWKSURL, "jwks-url", env(envJWKSURL, ""), "JWKS URL of the token issuer ($"+envJWKSURL+")")
		fs.StringVar(&c.JWTIssuer, "jwt-issuer", env(envJWTIssuer, ""), "required iss claim; Better Auth: the origin of its base URL, e.g. https://auth.example.com ($"+envJWTIssuer+")")
		fs.StringVar(&c.JWTAudience, "jwt-audience", env(envJWTAudience, ""), "required aud claim; Better Auth: the origin of its base URL, e.g. https://auth.example.com ($"+envJWTAudience+")")
		unpinned, err := strconv.ParseBool(env(envJWTUnpinned, "false"))
		if err != nil {
			return nil, fmt.Errorf("$%s: %w", envJWTUnpinned, err)
		}
		fs.BoolVar(&c.JWTUnpinned, "jwt-unpinned", unpinned, "start without --jwt-issuer and --jwt-audience, for an issuer that sets neither: any token it signs is accepted ($"+envJWTUnpinned+")")
		maxLifetime, err := time.ParseDuration(env(envJWTMaxLifetime, jwtauth.DefaultMaxLifetime.String()))
		if err != nil {
			return nil, fmt.Errorf("$%s: %w", envJWTMaxLifetime, err)
		}
		fs.DurationVar(&c.JWTMaxLifetime, "jwt-max-lifetime", maxLifetime, "tokens whose exp is further than this from their iat or from now are refused ($"+envJWTMaxLifetime+")")
		leeway, err := time.ParseDuration(env(envJWTLeeway, jwtauth.DefaultLeeway.String()))
		if err != nil {
			return nil, fmt.Errorf("$%s: %w", envJWTLeeway, err)
		}
		fs.DurationVar(&c.JWTLeeway, "jwt-leeway", leeway, "clock skew tolerated on a token's exp, nbf and iat and on its lifetime ($"+envJWTLeeway+")")
		migrate, err := strconv.ParseBool(env(envMigrate, "true"))
		if err != nil {
			return nil, fmt.Errorf("$%s: %w", envMigrate, err)
		}
		fs.BoolVar(&c.Migrate, "migrate", migrate, "apply migrations at start ($"+envMigrate+")")
		fs.BoolVar(&c.Dev, "dev", false, "dev mode: 127.0.0.1, a generated KEK, a built-in token issuer (refused when $"+envEnv+"=production)")
		shutdown, err := time.ParseDuration(env(envShutdownTimeout, "20s"))
		if err != nil {
			return nil, fmt.Errorf("$%s: %w", envShutdownTimeout, err)
		}
		fs.DurationVar(&c.ShutdownTimeout, "shutdown-timeout", shutdown, "grace period for in-flight requests on SIGTERM ($"+envShutdownTimeout+")")
		fs.StringVar(&c.RecoveryProof, "recovery-proof", env(envRecoveryProof, string(broker.RecoveryProofRequired)),
			"required: replacing a zero-knowledge recovery wrap needs keyProof; optional: accepted without it, the replaced wrap kept restorable ($"+envRecoveryProof+")")
		maxAge, err := parseAge(env(envDataKeyMaxAge, "90d"))
		if err != nil {
			return nil, fmt.Errorf("$%s: %w", envDataKeyMaxAge, err)
		}
		c.DataKeyMaxAge = maxAge
		fs.Func("data-key-max-age", "cached envelope mode: mint a new data key when the newest is this old, e.g. 90d or 2160h; 0 rotates only on demand (keybroker kek rotate-data-key) ($"+envDataKeyMaxAge+", default 90d)", func(v string) error {
			age, err := parseAge(v)
			c.DataKeyMaxAge = age
			return err
		})
		if err := c.Ops.register(fs, getenv); err != nil {
			return nil, err
		}
		if err := c.Rewrap.register(fs, getenv); err != nil {
			return nil, err
		}
		c.Grants.register(fs, getenv)
	}
	if err := fs.Parse(args); err != nil {
		return nil, errUsage
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	fs.Visit(func(f *flag.Flag) {
		if f.Name == "addr" {
			c.addrSet = true
		}
	})
	if getenv(envAddr) != "" {
		c.addrSet = true
	}
	if c.Schema == "" {
		return nil, fmt.Errorf("$%s must not be empty", envSchema)
	}
	if c.DatabaseURL == "" && c.DataDir == "" {
		return nil, fmt.Errorf("no store: set $%s to a PostgreSQL URL, or $%s to a directory for the embedded store", envDatabaseURL, envDataDir)
	}
	if serve && c.JWKSURL == "" && !c.Dev {
		return nil, fmt.Errorf("no token issuer: set $%s (or --jwks-url) to the issuer's JWKS URL (or run --dev for a built-in issuer)", envJWKSURL)
	}
	if serve {
		if err := c.validateTokens(); err != nil {
			return nil, err
		}
		if _, err := broker.ParseRecoveryProofPolicy(c.RecoveryProof); err != nil {
			return nil, fmt.Errorf("$%s (--recovery-proof): %w", envRecoveryProof, err)
		}
		if err := c.Ops.validate(); err != nil {
			return nil, err
		}
		if err := c.Rewrap.validate(); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// registerAllowPrivileged adds --allow-privileged-db-role, whose default
// is $KEYBROKER_ALLOW_PRIVILEGED_DB_ROLE, to every command that opens the
// PostgreSQL store.
func (c *config) registerAllowPrivileged(fs *flag.FlagSet, getenv func(string) string) error {
	allow := false
	if v := getenv(envAllowPrivileged); v != "" {
		var err error
		if allow, err = strconv.ParseBool(v); err != nil {
			return fmt.Errorf("$%s: %w", envAllowPrivileged, err)
		}
	}
	fs.BoolVar(&c.AllowPrivileged, "allow-privileged-db-role", allow,
		"TESTS ONLY: connect even as a superuser or a BYPASSRLS role, with which row-level security is not enforced ($"+envAllowPrivileged+")")
	return nil
}

// validateTokens checks the token settings. Outside dev mode tokens must
// be pinned to this deployment's issuer and audience, or the operator must
// say, with --jwt-unpinned, that the issuer sets neither.
func (c *config) validateTokens() error {
	if c.JWTLeeway < time.Second || c.JWTLeeway > jwtauth.MaxLeeway {
		return fmt.Errorf("$%s must be between 1s and %s", envJWTLeeway, jwtauth.MaxLeeway)
	}
	if c.JWTMaxLifetime < jwtauth.MinMaxLifetime {
		return fmt.Errorf("$%s must be at least %s", envJWTMaxLifetime, jwtauth.MinMaxLifetime)
	}
	if c.Dev || c.JWTUnpinned || (c.JWTIssuer != "" && c.JWTAudience != "") {
		return nil
	}
	return c.errUnpinned()
}

// errUnpinned says which claims to pin and what Better Auth's JWT plugin
// puts there: the origin of its base URL in both iss and aud, unless its
// jwt.issuer and jwt.audience options say otherwise.
func (c *config) errUnpinned() error {
	var missing []string
	if c.JWTIssuer == "" {
		missing = append(missing, fmt.Sprintf("$%s (--jwt-issuer)", envJWTIssuer))
	}
	if c.JWTAudience == "" {
		missing = append(missing, fmt.Sprintf("$%s (--jwt-audience)", envJWTAudience))
	}
	guess := "https://auth.example.com"
	if u, err := url.Parse(c.JWKSURL); err == nil && (u.Scheme == "https" || u.Scheme == "http") && u.Host != "" {
		guess = u.Scheme + "://" + u.Host // the JWKS is served under Better Auth's base URL
	}
	return fmt.Errorf(`tokens are not pinned to this deployment: set %s.
  Without them keybroker would accept any token the issuer signs, for any other service, and hand it a master key.
  Better Auth's JWT plugin puts the origin of its base URL ($BETTER_AUTH_URL, or baseURL in its config)
  in both iss and aud unless jwt({ jwt: { issuer, audience } }) sets them; for this JWKS most likely:
    %s=%s
    %s=%s
  If your issuer truly sets neither, start with %s=true (--jwt-unpinned) and accept that risk`,
		strings.Join(missing, " and "), envJWTIssuer, orDefault(c.JWTIssuer, guess), envJWTAudience, orDefault(c.JWTAudience, guess), envJWTUnpinned)
}

// warnUnpinned logs, loudly, each claim that tokens are not checked for.
func (c *config) warnUnpinned(log *slog.Logger) {
	if c.JWTIssuer == "" {
		log.Warn("TOKENS NOT PINNED: tokens from any issuer behind this JWKS are accepted; set "+envJWTIssuer, slog.Bool("jwt_unpinned", c.JWTUnpinned))
	}
	if c.JWTAudience == "" {
		log.Warn("TOKENS NOT PINNED: tokens the issuer signed for any audience are accepted; set "+envJWTAudience, slog.Bool("jwt_unpinned", c.JWTUnpinned))
	}
}

// parseAge reads a duration: Go's syntax (2160h, 90m) or whole days (90d);
// "0" is zero. Negative ages are refused.
func parseAge(s string) (time.Duration, error) {
	var d time.Duration
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.Atoi(days)
		if err != nil || n > 100*366 {
			return 0, fmt.Errorf("%q: want whole days (90d) or a Go duration (2160h)", s)
		}
		d = time.Duration(n) * 24 * time.Hour
	} else {
		var err error
		if d, err = time.ParseDuration(s); err != nil {
			return 0, fmt.Errorf("%q: want whole days (90d) or a Go duration (2160h)", s)
		}
	}
	if d < 0 {
		return 0, fmt.Errorf("%q: must not be negative", s)
	}
	return d, nil
}

// kekURIs returns the active KEK URI and the decrypt-only ones. With no
// KEK configured it falls back to env://MANA_AUTH_KEK, the original
// service's variable, when that is set.
func (c *config) kekURIs(getenv func(string) string) (active string, retired []string, err error) {
	active = c.KEK
	if active == "" && getenv(kekproviders.LegacyVariable) != "" {
		active = "env://" + kekproviders.LegacyVariable
	}
	if active == "" {
		return "", nil, errNoKEK
	}
	if c.KEKID != "" {
		active, err = withID(active, c.KEKID)
		if err != nil {
			return "", nil, err
		}
	}
	retired = strings.FieldsFunc(c.KEKRetired, func(r rune) bool { return r == ',' || r == ' ' || r == '\n' || r == '\t' })
	return active, retired, nil
}

var errNoKEK = errors.New(`no KEK configured.
  Generate one:   keybroker kek generate
  and set it:     MANA_AUTH_KEK=<that value>   (or KEYBROKER_KEK=<a KEK URI>)
  Guard it like a database password: without it no stored key can be opened.
  For a throwaway local run only, pass --dev`)

// withID sets the id parameter of a KEK URI.
func withID(uri, id string) (string, error) {
	u, err := url.Parse(uri)
	if err != nil {
		// A *url.Error quotes the whole URI, which may carry a token.
		var urlErr *url.Error
		if errors.As(err, &urlErr) {
			err = urlErr.Err
		}
		return "", fmt.Errorf("KEK URI: %w", err)
	}
	q := u.Query()
	if q.Has("id") && q.Get("id") != id {
		return "", fmt.Errorf("the KEK id is given twice, differently: in $%s and in the KEK URI", envKEKID)
	}
	q.Set("id", id)
	u.RawQuery = q.Encode()
	return u.String(), nil
}

func (c *config) logger(w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.LogLevel)); err != nil {
		return nil, fmt.Errorf("log level %q: use debug, info, warn or error", c.LogLevel)
	}
	opts := &slog.HandlerOptions{Level: level}
	switch c.LogFormat {
	case "":
		// People read a terminal; log pipelines and journald parse JSON.
		if isTerminal(w) {
			return slog.New(slog.NewTextHandler(w, opts)), nil
		}
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	default:
		return nil, fmt.Errorf("log format %q: use json or text", c.LogFormat)
	}
}
