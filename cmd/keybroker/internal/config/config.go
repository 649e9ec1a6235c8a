// Package config is keybroker's configuration: every setting of every
// command in one table (settings.go) — its environment variable, its
// flag, its default, its parser and its check — and Resolve, which reads
// the environment and one command's flags once into a typed Config.
//
// A problem with a setting names its variable and its flag, and Resolve
// reports every problem at once, so an operator fixes a configuration in
// one go; a configuration that would leave a background job of serve
// unable to run is one of them. Only cmd/keybroker reads flags and the
// environment, and it does so through this package.
package config

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"net/url"
	"path/filepath"
	"strings"
	"time"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/pgstore"
)

// Config is the resolved configuration of one command. Sections a
// command does not read keep their zero value.
type Config struct {
	Command Command
	Store   Store
	Log     Log
	KEKs    KEKs
	// Dev is --dev: for serve, dev mode; for the operator commands, the
	// dev KEK of the data directory (and the all-zero KEK) is accepted.
	Dev    bool
	Server Server
	Tokens Tokens
	Ops    Ops
	Rewrap RewrapSchedule
	// Rollout is serve's part in the one-step rollout of a new KEK.
	Rollout Rollout
	// DataKeyMaxAge is how old the newest data key of cached envelope
	// mode gets before serve mints the next; 0: only on demand.
	DataKeyMaxAge time.Duration
	// AuditRetention is how long audit rows are kept; 0 keeps every row
	// (broker.AuditSchedule.Retention).
	AuditRetention time.Duration
	RecoveryProof  broker.RecoveryProofPolicy
	// Grants are the mission grants' recipients.
	Grants Grants
	// Tool holds the operator commands' own flags.
	Tool Tool
	// AuditSealInterval is how often serve seals audit rows (docs/audit.md).
	AuditSealInterval time.Duration

	values []Value
	raw    map[*setting]string
}

// Grants names the workers mission grants are wrapped to. Their keys are
// read and checked when serve starts (cmd/keybroker/grants.go).
type Grants struct {
	// DefaultPEM is the upstream's default recipient: an RSA public key,
	// the PEM text itself (literal "\n" read as newlines).
	DefaultPEM string
	// Recipients lists the named recipients: name=path entries, each
	// path a PEM public key, separated by spaces, commas or newlines.
	Recipients string
}

// Store is where the vaults are.
type Store struct {
	// DatabaseURL is a PostgreSQL URL; empty: the embedded store in
	// DataDir. It may hold a password: print it with Values.
	DatabaseURL string
	DataDir     string
	Schema      string
	// Migrate applies migrations when serve starts.
	Migrate bool
	// AllowPrivileged connects even as a role row-level security does not
	// bind (tests only).
	AllowPrivileged bool
	// PoolSize is the most connections of the PostgreSQL pool; the URL's
	// pool_max_conns says the same, and the two must agree.
	PoolSize int
}

// Log is where and how the command logs.
type Log struct {
	Level slog.Level
	// Format is "json", "text", or "" for text on a terminal, else JSON.
	Format string
}

// Server is serve's listener.
type Server struct {
	Addr            string
	ShutdownTimeout time.Duration
}

// Tokens is how serve checks bearer tokens. In dev mode without a JWKS
// URL the built-in issuer's values are filled in by serve (UseIssuer).
type Tokens struct {
	JWKSURL  string
	Issuer   string
	Audience string
	// Unpinned is the documented opt-out of pinning iss and aud.
	Unpinned    bool
	MaxLifetime time.Duration
	Leeway      time.Duration
}

// UseIssuer pins tokens to an issuer serve runs itself (dev mode).
func (t *Tokens) UseIssuer(jwksURL, name string) {
	t.JWKSURL, t.Issuer, t.Audience = jwksURL, name, name
}

// Ops is serve's operations surface.
type Ops struct {
	MetricsAddr    string
	CORSOrigins    []string
	TrustedProxies []netip.Prefix
	RateLimit      float64
	RateBurst      int
	ServiceKey     string
	TLSCert        string
	TLSKey         string
	ReadyInterval  time.Duration
}

// RewrapSchedule is serve's background re-wrap job.
type RewrapSchedule struct {
	Enabled  bool
	Interval time.Duration
	Batch    int
	Rate     float64
}

// Tool is the operator commands' own flags.
type Tool struct {
	// rewrap
	DryRun        bool
	Batch         int
	Rate          float64
	Concurrency   int
	ProgressEvery time.Duration
	// kek check; healthcheck
	Timeout time.Duration
	// vault restore-recovery; dev token
	User    string
	Discard bool
	TTL     time.Duration
	// healthcheck: the URL, and the certificates it trusts for https
	URL    string
	CAFile string
	// grant keygen: the algorithm and where the key pair goes
	Algorithm  string
	PrivateKey string
	PublicKey  string
	// audit export: the cursor's file, and whether to keep following
	CursorFile string
	Follow     bool
}

// ErrUsage is a command line that did not parse: the flag package has
// printed why, or the usage asked for.
var ErrUsage = errors.New("usage")

// ErrHelp is -h or --help: the help was asked for. A *HelpError carries
// its text.
var ErrHelp = flag.ErrHelp

// HelpError is the help of a command, asked for with -h or --help: the
// caller prints Text to stdout and exits 0.
type HelpError struct{ Text string }

func (e *HelpError) Error() string { return "help requested" }

// Is makes errors.Is(err, ErrHelp) true.
func (e *HelpError) Is(target error) bool { return target == ErrHelp }

// Problems is every problem of a configuration, each naming its setting.
type Problems []error

// Error lists the problems, one a line.
func (p Problems) Error() string {
	lines := make([]string, len(p))
	for i, err := range p {
		lines[i] = err.Error()
	}
	return strings.Join(lines, "\n")
}

// Unwrap lets errors.Is and errors.As look at each problem.
func (p Problems) Unwrap() []error { return p }

// Resolve reads the settings of cmd from the environment (getenv) and
// from args, which are cmd's flags; flag parse errors and the usage go to
// stderr, with usage (when not empty) above the flags. It returns
// ErrUsage for a command line that does not parse, a *HelpError (usage
// and flags, for stdout) for -h or --help, and otherwise either the
// configuration or Problems, every problem at once.
func Resolve(cmd Command, args []string, getenv func(string) string, stderr io.Writer, usage string) (*Config, error) {
	c := &Config{Command: cmd, raw: map[*setting]string{}}
	fs := flag.NewFlagSet(cmd.String(), flag.ContinueOnError)
	// What the flag package prints goes to stderr for a mistake, and is
	// the help itself (for stdout) when asked for with -h or --help.
	var printed strings.Builder
	fs.SetOutput(&printed)
	fs.Usage = func() {
		if usage != "" {
			fmt.Fprint(&printed, usage)
		} else {
			fmt.Fprintf(&printed, "Usage: %s [flags]\n\nFlags:\n", cmd)
		}
		PrintFlags(&printed, cmd)
	}
	given := map[*setting]*flagValue{}
	for _, s := range settings {
		if s.in(cmd) && s.flag != "" && s.flagIn(cmd) {
			v := &flagValue{isBool: s.isBool, def: s.defaultFor(cmd)}
			if s.secret || (s.isBool && v.def == "false") {
				v.def = "" // -h shows no default for these
			}
			fs.Var(v, s.flag, s.usageText())
			given[s] = v
		}
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil, &HelpError{Text: printed.String()}
		}
		fmt.Fprint(stderr, printed.String())
		return nil, ErrUsage
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	var problems Problems
	for _, s := range settings {
		if !s.in(cmd) {
			continue
		}
		value, source := s.defaultFor(cmd), SourceDefault
		switch v := given[s]; {
		case v != nil && v.set:
			value, source = v.value, SourceFlag
		case s.env != "" && getenv(s.env) != "":
			value, source = getenv(s.env), SourceEnv
		case s.altEnv != "" && getenv(s.altEnv) != "":
			value, source = getenv(s.altEnv), SourceEnv
		}
		c.raw[s] = value
		c.values = append(c.values, Value{Env: s.env, Flag: s.flag, Value: s.shown(value), Source: source})
		if s.apply == nil {
			continue
		}
		if err := s.apply(c, value); err != nil {
			problems = append(problems, fmt.Errorf("%s: %w", s.name(), err))
		}
	}
	problems = append(problems, c.check(getenv)...)
	if len(problems) > 0 {
		// The configuration comes along for "config check", which shows
		// what was read beside what is wrong; it is not to be run.
		return c, problems
	}
	return c, nil
}

// check is what no single setting can check: settings that go together,
// the KEKs, dev mode, and what serve's background jobs need.
func (c *Config) check(getenv func(string) string) Problems {
	var problems Problems
	cmd := c.Command
	if cmd&configCmds != 0 {
		cmd = Serve // they check what serve would
	}
	if cmd&(Serve|Migrate|Tools) != 0 && c.Store.DatabaseURL == "" && c.Store.DataDir == "" {
		problems = append(problems, fmt.Errorf("no store: set %s to a PostgreSQL URL, or %s to a directory for the embedded store",
			databaseURL.name(), dataDir.name()))
	}
	production := getenv(EnvEnv) == "production"
	switch {
	case cmd == Serve && c.Dev && production:
		problems = append(problems, fmt.Errorf("--dev refused: $%s is production", EnvEnv))
	case cmd == DevToken && production:
		problems = append(problems, fmt.Errorf("dev token refused: $%s is production", EnvEnv))
	}
	if n, ok := pgstore.URLPoolSize(c.Store.DatabaseURL); ok && cmd == Serve {
		// The URL's pool_max_conns is the older way to say it.
		if c.set(dbPoolSize) && n != c.Store.PoolSize {
			problems = append(problems, fmt.Errorf("the pool size is given twice, differently: %s=%d and pool_max_conns=%d in %s; keep one",
				dbPoolSize.name(), c.Store.PoolSize, n, databaseURL.name()))
		}
		c.Store.PoolSize = n
	}
	if cmd == Serve {
		if c.Dev && !c.set(addr) {
			c.Server.Addr = "127.0.0.1:" + c.raw[port]
		}
		if c.Tokens.JWKSURL == "" && !c.Dev {
			problems = append(problems, fmt.Errorf("no token issuer: set %s to the issuer's JWKS URL (or run --dev for a built-in issuer)", jwksURL.name()))
		} else if !c.Dev && !c.Tokens.Unpinned && (c.Tokens.Issuer == "" || c.Tokens.Audience == "") {
			problems = append(problems, c.errUnpinned())
		}
		if (c.Ops.TLSCert == "") != (c.Ops.TLSKey == "") {
			problems = append(problems, fmt.Errorf("TLS needs both %s and %s", tlsCert.name(), tlsKey.name()))
		}
		if c.Ops.RateLimit > 0 && c.Ops.RateBurst < 1 {
			problems = append(problems, fmt.Errorf("%s: must be at least 1 while %s is on", rateBurst.name(), rateLimit.name()))
		}
	}
	if cmd&(Serve|Tools) != 0 {
		kekProblems := c.resolveKEKs(getenv)
		if cmd&needKEK != 0 {
			problems = append(problems, kekProblems...)
		}
	}
	return problems
}

// Set reports whether the setting whose flag is flag was given, by its
// flag or its variables, rather than left at its default.
func (c *Config) Set(flag string) bool {
	for _, s := range settings {
		if s.flag == flag && s.in(c.Command) {
			return c.set(s)
		}
	}
	return false
}

// set reports whether s was given, by its flag or its variables.
func (c *Config) set(s *setting) bool {
	for _, v := range c.values {
		if v.Env == s.env && v.Flag == s.flag {
			return v.Source != SourceDefault
		}
	}
	return false
}

// errUnpinned says which claims to pin and what Better Auth's JWT plugin
// puts there: the origin of its base URL in both iss and aud, unless its
// jwt.issuer and jwt.audience options say otherwise.
func (c *Config) errUnpinned() error {
	var missing []string
	if c.Tokens.Issuer == "" {
		missing = append(missing, jwtIssuer.name())
	}
	if c.Tokens.Audience == "" {
		missing = append(missing, jwtAudience.name())
	}
	guess := "https://auth.example.com"
	if u, err := url.Parse(c.Tokens.JWKSURL); err == nil && (u.Scheme == "https" || u.Scheme == "http") && u.Host != "" {
		guess = u.Scheme + "://" + u.Host // the JWKS is served under Better Auth's base URL
	}
	return fmt.Errorf(`tokens are not pinned to this deployment: set %s.
  Without them keybroker would accept any token the issuer signs, for any other service, and hand it a master key.
  Better Auth's JWT plugin puts the origin of its base URL ($BETTER_AUTH_URL, or baseURL in its config)
  in both iss and aud unless jwt({ jwt: { issuer, audience } }) sets them; for this JWKS most likely:
    %s=%s
    %s=%s
  If your issuer truly sets neither, start with %s=true (--jwt-unpinned) and accept that risk`,
		strings.Join(missing, " and "), jwtIssuer.env, orDefault(c.Tokens.Issuer, guess), jwtAudience.env,
		orDefault(c.Tokens.Audience, guess), jwtUnpinned.env)
}

func orDefault(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

// Source is where a setting's value came from.
type Source string

// The sources of a value, the first that has one winning.
const (
	SourceFlag    Source = "flag"
	SourceEnv     Source = "environment"
	SourceDefault Source = "default"
)

// Value is the effective value of one setting, as an operator would check
// it: secrets redacted, passwords out of URLs.
type Value struct {
	Env, Flag string
	Value     string
	Source    Source
}

// Values lists the effective value of every setting the command read, in
// the table's order.
func (c *Config) Values() []Value { return c.values }

// DevKEKFile and DevKEKID are the dev KEK that serve --dev generates in
// the data directory when no KEK is configured.
const (
	DevKEKFile = "dev-kek"
	DevKEKID   = "dev-v1"
)

// DevKEKPath is where the dev KEK of the data directory is.
func (c *Config) DevKEKPath() string {
	dir, err := filepath.Abs(c.Store.DataDir)
	if err != nil {
		dir = c.Store.DataDir
	}
	return filepath.Join(dir, DevKEKFile)
}

// PrintFlags lists the flags of cmd, in the table's order: each with
// what it means, the environment variable it also reads (only those that
// read one say so) and its default.
func PrintFlags(w io.Writer, cmd Command) {
	for _, s := range settings {
		if !s.in(cmd) || s.flag == "" || !s.flagIn(cmd) {
			continue
		}
		name := "--" + s.flag
		if !s.isBool {
			name += " " + s.metavar()
		}
		fmt.Fprintf(w, "  %s\n    \t%s", name, s.usageText())
		if def := s.defaultFor(cmd); def != "" && !s.secret && !(s.isBool && def == "false") {
			fmt.Fprintf(w, " (default %s)", def)
		}
		fmt.Fprintln(w)
	}
}

// flagValue is a flag's value as given on the command line; the settings
// parse it once, together with the environment.
type flagValue struct {
	isBool bool
	def    string // shown by -h
	set    bool
	value  string
}

func (v *flagValue) String() string {
	if v == nil {
		return ""
	}
	return v.def
}

func (v *flagValue) Set(s string) error {
	v.set, v.value = true, s
	return nil
}

// IsBoolFlag lets a boolean flag stand alone (--dev).
func (v *flagValue) IsBoolFlag() bool { return v.isBool }
