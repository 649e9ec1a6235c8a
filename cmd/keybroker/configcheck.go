package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/cmd/keybroker/internal/config"
	"github.com/keybroker/keybroker/kekproviders"
	"github.com/keybroker/keybroker/pgstore"
	"github.com/keybroker/keybroker/vaultapi/jwtauth"
)

// `keybroker config check` and `keybroker config show`: the configuration
// serve would read, shown and probed without serving.

const configUsage = `Both read the environment and the flags exactly as serve does, so run them
with the deployment's environment: the systemd unit's credentials and
environment file, the Compose service, the pod (deploy/README.md,
"Operator commands"). Secrets are never printed.
`

const configCheckUsage = `Usage: keybroker config check [flags]

Resolves the configuration the way serve does, then opens and probes what
serve would open at start, without serving and without changing anything:
each KEK (opened, its status read, a wrap+unwrap round trip), the database
(reachable, a role that row-level security binds, the grants the
migrations need, the pool against max_connections, rows of KEKs no longer
configured), the JWKS (fetched and parsed) and the TLS certificate and
key. It prints the effective settings (secrets redacted, each with where
it came from), then every check, then every problem with its fix. Exit
status 0: serve would start; 1: it would not. A warning (the JWKS
unreachable now, a tight connection budget) does not fail the check: serve
starts through it.

Flags (serve's, and --timeout):
`

const configShowUsage = `Usage: keybroker config show [flags]

Prints the settings serve would run with: each setting's variable and
flag, its effective value (secrets REDACTED, passwords out of URLs) and
where the value came from (flag, environment, default). It opens nothing;
"keybroker config check" also probes. Exit status 1 when the settings have
problems, which it lists.

Flags (serve's):
`

// cmdConfigShow is `keybroker config show`.
func cmdConfigShow(_ context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cfg, err := config.Resolve(config.ConfigShow, args, getenv, stderr, configShowUsage)
	var problems config.Problems
	if err != nil && !errors.As(err, &problems) {
		return err
	}
	printValues(stdout, cfg)
	if len(problems) > 0 {
		printProblems(stdout, problems)
		return fmt.Errorf("serve would not start: %s", countOf(len(problems), "problem"))
	}
	return nil
}

// printValues is the table of effective settings.
func printValues(w io.Writer, cfg *config.Config) {
	fmt.Fprintln(w, "settings (as serve reads them):")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  setting\tvalue\tfrom")
	for _, v := range cfg.Values() {
		value := v.Value
		if value == "" {
			value = "-"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", settingName(v.Env, v.Flag), value, v.Source)
	}
	tw.Flush()
	if active := cfg.KEKs.Active; active != nil {
		fmt.Fprintf(w, "active KEK: %s, from %s\n", active.ID, active.Setting)
	}
	for _, also := range cfg.KEKs.Also {
		fmt.Fprintf(w, "also wraps every data key: %s, from %s\n", also.ID, also.Setting)
	}
}

// settingName names a setting as messages do: "$VAR (--flag)".
func settingName(env, flag string) string {
	switch {
	case env == "":
		return "--" + flag
	case flag == "":
		return "$" + env
	default:
		return fmt.Sprintf("$%s (--%s)", env, flag)
	}
}

func printProblems(w io.Writer, problems []error) {
	fmt.Fprintf(w, "\n%s; serve would not start:\n", countOf(len(problems), "problem"))
	for i, p := range problems {
		fmt.Fprintf(w, "%d. %s\n", i+1, indent(p.Error(), "   ")[3:])
	}
}

func countOf(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

// checkReport collects what config check finds.
type checkReport struct {
	w        io.Writer
	problems []error
	warnings int
}

func (r *checkReport) ok(what, detail string) { fmt.Fprintf(r.w, "  ok    %s: %s\n", what, detail) }

func (r *checkReport) warn(what, detail string) {
	r.warnings++
	fmt.Fprintf(r.w, "  WARN  %s: %s\n", what, firstLine(detail))
}

// fail records a problem: serve would not start.
func (r *checkReport) fail(what string, err error) {
	r.problems = append(r.problems, fmt.Errorf("%s: %w", what, err))
	fmt.Fprintf(r.w, "  FAIL  %s: %s\n", what, firstLine(err.Error()))
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return line
}

// cmdConfigCheck is `keybroker config check`.
func cmdConfigCheck(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cfg, err := config.Resolve(config.ConfigCheck, args, getenv, stderr, configCheckUsage)
	var problems config.Problems
	if err != nil && !errors.As(err, &problems) {
		return err
	}
	printValues(stdout, cfg)
	r := &checkReport{w: stdout, problems: problems}
	fmt.Fprintln(stdout, "\nchecks:")
	if len(problems) > 0 {
		fmt.Fprintf(stdout, "  FAIL  settings: %s (below)\n", countOf(len(problems), "problem"))
	}
	log := slog.New(slog.DiscardHandler)
	keks := r.checkKEKs(ctx, cfg, getenv, log)
	if keks != nil {
		defer keks.close()
	}
	r.checkStore(ctx, cfg, keks, log)
	r.checkJWKS(ctx, cfg)
	r.checkTLS(cfg.Ops)
	if !cfg.Dev && cfg.Tokens.JWKSURL != "" && (cfg.Tokens.Issuer == "" || cfg.Tokens.Audience == "") && cfg.Tokens.Unpinned {
		r.warn("tokens", "not pinned ("+config.Name("jwt-unpinned")+"): any token the issuer signs opens a user's key")
	}
	if len(r.problems) > 0 {
		printProblems(stdout, r.problems)
		return fmt.Errorf("serve would not start: %s", countOf(len(r.problems), "problem"))
	}
	fmt.Fprintf(stdout, "\nserve would start (%s)\n", countOf(r.warnings, "warning"))
	return nil
}

// checkKEKs opens and probes each configured KEK, as serve does at start,
// and returns them opened when all opened (for the store's checks).
func (r *checkReport) checkKEKs(ctx context.Context, cfg *config.Config, getenv func(string) string, log *slog.Logger) *openedKEKs {
	specs := cfg.KEKs.All()
	if len(specs) == 0 {
		return nil // no KEK configured: a settings problem already
	}
	opener := kekproviders.Opener{AllowDevKeys: cfg.KEKs.AllowDevKeys, Getenv: getenv}
	allOpened := true
	for _, spec := range specs {
		what := fmt.Sprintf("KEK %s (%s, %s)", spec.ID, spec.Role, spec.Setting)
		if spec.Dev && cfg.Dev {
			if _, err := os.Stat(cfg.DevKEKPath()); errors.Is(err, fs.ErrNotExist) {
				r.ok(what, "serve --dev generates it at "+cfg.DevKEKPath())
				allOpened = false
				continue
			}
		}
		res, err := checkOne(ctx, opener, spec, cfg.Tool.Timeout)
		switch {
		case err != nil:
			r.fail(what, err)
			allOpened = false
		case !res.OK():
			// serve starts not ready on an unreachable active KEK, and
			// refuses one that answers but fails.
			if res.Class() == "unavailable" || res.Class() == "timeout" {
				r.warn(what, "unreachable now, serve starts not ready: "+res.Err().Error())
			} else {
				r.fail(what, res.Err())
			}
			allOpened = false
		default:
			r.ok(what, fmt.Sprintf("%s via %s, wrap %s, unwrap %s", res.Class(), spec.Scheme, latency(res.WrapLatency), latency(res.UnwrapLatency)))
		}
	}
	if !allOpened {
		return nil
	}
	keks, err := openKEKs(ctx, cfg.KEKs, getenv, log)
	if err != nil {
		return nil
	}
	return keks
}

// checkStore reaches the store as serve would, without migrating it.
func (r *checkReport) checkStore(ctx context.Context, cfg *config.Config, keks *openedKEKs, log *slog.Logger) {
	what := "store " + storeName(cfg)
	if cfg.Store.DatabaseURL == "" {
		path := sqlitePath(cfg.Store.DataDir)
		if _, err := os.Stat(path); err == nil {
			r.ok(what, "the embedded store exists (serve migrates it at start)")
		} else {
			r.ok(what, "no embedded store yet: serve creates it")
		}
		return
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Tool.Timeout)
	defer cancel()
	pool, err := pgstore.NewPool(ctx, pgstore.PoolConfig{URL: cfg.Store.DatabaseURL, MaxConns: cfg.Store.PoolSize})
	if err != nil {
		r.fail(config.Name("database-url"), err)
		return
	}
	defer pool.Close()
	err = pgstore.CheckRole(ctx, pool)
	var privileged *pgstore.PrivilegedRoleError
	switch {
	case errors.As(err, &privileged) && cfg.Store.AllowPrivileged:
		r.warn(what, "row-level security is not enforced: "+privileged.Error())
	case errors.As(err, &privileged):
		r.fail(what, privilegedRoleRefusal(privileged))
		return
	case err != nil:
		r.fail(what, fmt.Errorf("cannot reach the database (serve would not start): %w", err))
		return
	default:
		r.ok(what, "reachable; the role is bound by row-level security")
	}
	if b, err := pgstore.ReadConnectionBudget(ctx, pool); err == nil {
		detail := fmt.Sprintf("pool %d per replica; max_connections %d (%d reserved, %d open now); room for %d replicas",
			b.Pool, b.MaxConnections, b.Reserved, b.Open, b.Replicas())
		if b.Tight() {
			r.warn("connections", detail+"; TIGHT: lower "+config.Name("db-pool-size")+" or raise max_connections")
		} else {
			r.ok("connections", detail)
		}
	}
	store, err := pgstore.New(ctx, pgstore.Config{Pool: pool, Schema: cfg.Store.Schema})
	if err != nil {
		r.fail(what, err)
		return
	}
	migrated := store.Ping(ctx) == nil
	switch {
	case cfg.Store.Migrate:
		if err := pgstore.CheckMigratePrivileges(ctx, pool, cfg.Store.Schema); err != nil {
			r.fail("migrations", err)
			return
		}
		r.ok("migrations", "the role may apply them to schema "+cfg.Store.Schema+" (serve does at start)")
	case !migrated:
		r.fail("migrations", fmt.Errorf("schema %s is not migrated and %s is off: run \"keybroker migrate\" first", cfg.Store.Schema, config.Name("migrate")))
		return
	}
	if !migrated || keks == nil {
		return
	}
	keyring, err := keks.lookingKeyring(ctx, store, log)
	if err != nil {
		r.fail("keyring", err)
		return
	}
	if err := broker.CheckDataKeyWraps(ctx, store, keyring); err != nil {
		r.fail("data keys", err)
		return
	}
	if err := broker.CheckKeyringCoversRows(ctx, store, keyring); err != nil {
		r.fail("rows", explainRetiredKEKs(err))
		return
	}
	r.ok("rows", "every row with a server wrap opens with the configured KEKs")
}

// checkJWKS fetches and parses the JWKS as serve does at start: a mistake
// (4xx, not a key set) would stop serve; an outage would start it not
// ready.
func (r *checkReport) checkJWKS(ctx context.Context, cfg *config.Config) {
	if cfg.Tokens.JWKSURL == "" {
		if cfg.Dev {
			r.ok("JWKS", "the built-in issuer of dev mode")
		}
		return
	}
	what := "JWKS " + config.Name("jwks-url")
	ctx, cancel := context.WithTimeout(ctx, cfg.Tool.Timeout)
	defer cancel()
	v, err := jwtauth.New(ctx, jwtauth.Config{JWKSURL: cfg.Tokens.JWKSURL, Issuer: cfg.Tokens.Issuer, Audience: cfg.Tokens.Audience,
		MaxLifetime: cfg.Tokens.MaxLifetime, Leeway: cfg.Tokens.Leeway})
	if err != nil {
		r.fail(what, err)
		return
	}
	defer v.Close()
	if ready, fetchErr := v.Status(); !ready {
		detail := "not loaded yet"
		if fetchErr != nil {
			detail = fetchErr.Error()
		}
		r.warn(what, "unreachable now, serve starts not ready until it loads: "+detail)
		return
	}
	r.ok(what, "fetched and parsed")
}

// checkTLS loads the certificate and key as serve does.
func (r *checkReport) checkTLS(ops config.Ops) {
	if ops.TLSCert == "" {
		return
	}
	what := "TLS " + config.Name("tls-cert")
	cert, err := tls.LoadX509KeyPair(ops.TLSCert, ops.TLSKey)
	if err != nil {
		r.fail(what, fmt.Errorf("certificate %s with key %s: %w", ops.TLSCert, ops.TLSKey, err))
		return
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		r.fail(what, err)
		return
	}
	detail := fmt.Sprintf("%s, names %s, valid until %s", ops.TLSCert, strings.Join(leaf.DNSNames, ","), leaf.NotAfter.UTC().Format(time.DateOnly))
	switch left := time.Until(leaf.NotAfter); {
	case left <= 0:
		r.warn(what, detail+": EXPIRED, clients will refuse it")
	case left < 14*24*time.Hour:
		r.warn(what, detail+": expires soon; renew it and send serve SIGHUP")
	default:
		r.ok(what, detail)
	}
}
