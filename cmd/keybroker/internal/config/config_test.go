package config

import (
	"errors"
	"io"
	"log/slog"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/pgstore"
)

// base is what each command needs to resolve at all.
func base(cmd Command) map[string]string {
	env := map[string]string{"KEYBROKER_KEK": "env://K?id=k"}
	if cmd == Serve {
		env["KEYBROKER_JWKS_URL"] = "https://auth.test/jwks"
		env["KEYBROKER_JWT_ISSUER"] = "https://auth.test"
		env["KEYBROKER_JWT_AUDIENCE"] = "https://auth.test"
	}
	return env
}

func resolve(cmd Command, env map[string]string, args ...string) (*Config, error) {
	all := base(cmd)
	for k, v := range env {
		all[k] = v
	}
	return Resolve(cmd, args, func(k string) string { return all[k] }, io.Discard, "")
}

// firstCommand is a command that reads s.
func firstCommand(s *setting) Command {
	for cmd := Serve; cmd <= lastCommand; cmd <<= 1 {
		if s.in(cmd) && (s.flag == "" || s.flagIn(cmd)) {
			return cmd
		}
	}
	return 0
}

// value is the effective value of s in c.
func value(t *testing.T, c *Config, s *setting) Value {
	t.Helper()
	for _, v := range c.Values() {
		if v.Env == s.env && v.Flag == s.flag {
			return v
		}
	}
	t.Fatalf("%s was not read", s.name())
	return Value{}
}

// samples are, for each setting, two good values and a bad one with what
// its refusal says (bad is empty for settings that take any text).
var samples = map[*setting]struct{ good, other, bad, says string }{
	port:              {"8080", "9090", "http", "want a port number"},
	addr:              {"127.0.0.1:1", "127.0.0.1:2", "localhost", "want host:port"},
	databaseURL:       {"postgres://a@h/db", "postgres://b@h/db", "postgres://a:pw@h:x/db", `invalid port ":x" after host`},
	dbPoolSize:        {"4", "100", "0", "want a whole number of connections between 1 and 10000"},
	dataDir:           {"/tmp/a", "/tmp/b", "", ""},
	schema:            {"auth", "other", "", ""},
	migrate:           {"false", "true", "maybe", `"maybe": want true or false`},
	allowPrivileged:   {"true", "false", "yes please", "want true or false"},
	logLevel:          {"debug", "error", "loud", "use debug, info, warn or error"},
	logFormat:         {"json", "text", "xml", "use json or text"},
	kekURI:            {"env://A?id=a", "env://B?id=b", "file:///etc/kek", "?id="},
	kekID:             {"a1", "a2", "", ""},
	kekRetired:        {"env://A?id=a", "env://B?id=b env://C?id=c", "ftp", "no scheme"},
	dev:               {"true", "false", "sure", "want true or false"},
	jwksURL:           {"https://a/jwks", "https://b/jwks", "auth.example.com/api/auth/jwks", "want an absolute http or https URL"},
	jwtIssuer:         {"https://a", "https://b", "", ""},
	jwtAudience:       {"https://a", "https://b", "", ""},
	jwtUnpinned:       {"true", "false", "perhaps", "want true or false"},
	jwtMaxLifetime:    {"2h", "3h", "10s", "must be at least 1m"},
	jwtLeeway:         {"10s", "1m", "10m", "must be between 1s and 5m0s"},
	shutdownTimeout:   {"5s", "1m", "soon", "want a duration"},
	recoveryProof:     {"optional", "required", "off", "required"},
	grantDefaultKey:   {"-----BEGIN PUBLIC KEY-----", "-----BEGIN PUBLIC KEY-----\\n", "", ""},
	grantRecipients:   {"a=/keys/a.pem", "a=/keys/a.pem b=/keys/b.pem", "", ""},
	dataKeyMaxAge:     {"30d", "2160h", "-1d", "must not be negative"},
	rewrap:            {"false", "true", "often", "want true or false"},
	rewrapInterval:    {"10s", "5m", "500ms", "must be at least 1s"},
	rewrapBatch:       {"10", "10000", "20000", "between 1 and 10000"},
	rewrapRate:        {"0", "50.5", "-1", "must not be negative"},
	auditSealInterval: {"10s", "5m", "500ms", "must be between 1s and 24h0m0s"},
	auditRetention:    {"400d", "9600h", "12h", "at least 1d"},
	metricsAddr:       {"127.0.0.1:9090", "127.0.0.1:9091", "", ""},
	corsOrigins:       {"https://a.test", "https://b.test", "", ""},
	trustedProxies:    {"10.0.0.0/8", "192.168.0.1", "proxy.internal", "proxy.internal"},
	rateLimit:         {"0.5", "100", "fast", "want requests per second"},
	rateBurst:         {"5", "100", "-1", "want a whole number of requests, not negative"},
	serviceKey:        {"service-key-0123456789", "service-key-abcdefghij", "", ""},
	tlsCert:           {"/c.pem", "/d.pem", "", ""},
	tlsKey:            {"/k.pem", "/l.pem", "", ""},
	readyInterval:     {"1s", "30s", "1ms", "must be at least 100ms"},

	rolloutHeartbeat: {"5s", "0", "500ms", "must be between 1s and 10m0s"},
	rolloutReplicas:  {"3", "0", "-1", "want a whole number of replicas between 0 and 10000"},

	toolDryRun:        {"true", "false", "never", "want true or false"},
	toolBatch:         {"50", "10000", "0", "between 1 and 10000"},
	toolRate:          {"100", "0", "-5", "must not be negative"},
	toolConcurrency:   {"2", "16", "0", "at least 1"},
	toolProgressEvery: {"1s", "0s", "often", "want a duration"},
	toolCheckTimeout:  {"5s", "1m", "0s", "must be at least 1s"},
	toolUser:          {"alice", "bob", "", ""},
	toolDiscard:       {"true", "false", "dunno", "want true or false"},
	toolTTL:           {"10m", "2h", "0s", "must be at least 1s"},
	toolAlgorithm:     {"rsa-oaep-256", "hpke-x25519", "", ""},
	toolPrivateKey:    {"/keys/w.key", "/keys/v.key", "", ""},
	toolPublicKey:     {"/keys/w.pem", "/keys/v.pem", "", ""},
	toolURL:           {"http://a/healthz", "https://b/healthz", "localhost:3001/healthz", "want http://host:port/path"},
	toolCAFile:        {"/ca.pem", "/other-ca.pem", "", ""},
	toolHealthTimeout: {"1s", "10s", "soon", "want a duration"},
	toolCursorFile:    {"/var/lib/shipper/cursor", "/tmp/cursor", "", ""},
	toolFollow:        {"true", "false", "always", "want true or false"},
}

// TestEverySetting: each setting of the table is read from its flag,
// else its variable, else its default, and a bad value is refused with a
// message that names the variable and the flag.
func TestEverySetting(t *testing.T) {
	t.Parallel()
	for _, s := range settings {
		sample, ok := samples[s]
		require.True(t, ok, "no sample for %s", s.name())
		cmd := firstCommand(s)
		require.NotZero(t, cmd, s.name())
		t.Run(strings.TrimPrefix(s.name(), "$"), func(t *testing.T) {
			t.Parallel()
			// What the setting needs beside it to resolve: without a value
			// (the default), and with one.
			var defaultEnv, withEnv map[string]string
			var defaultArgs []string
			switch s {
			case jwksURL:
				defaultEnv, defaultArgs = map[string]string{"KEYBROKER_JWKS_URL": ""}, []string{"--dev"}
			case jwtIssuer, jwtAudience:
				defaultEnv = map[string]string{s.env: "", "KEYBROKER_JWT_UNPINNED": "true"}
			case kekURI:
				defaultEnv = map[string]string{"KEYBROKER_KEK": "", "MANA_AUTH_KEK": "x"}
			case kekID:
				withEnv = map[string]string{"KEYBROKER_KEK": "env://K"}
			case tlsCert:
				withEnv = map[string]string{"KEYBROKER_TLS_KEY": "/k.pem"}
			case tlsKey:
				withEnv = map[string]string{"KEYBROKER_TLS_CERT": "/c.pem"}
			}
			with := func(v string) map[string]string {
				env := map[string]string{}
				for k, v := range withEnv {
					env[k] = v
				}
				if s.env != "" && v != "" {
					env[s.env] = v
				}
				return env
			}

			c, err := resolve(cmd, defaultEnv, defaultArgs...)
			require.NoError(t, err)
			require.Equal(t, Value{Env: s.env, Flag: s.flag, Value: s.shown(s.defaultFor(cmd)), Source: SourceDefault}, value(t, c, s))
			if s.env != "" {
				c, err = resolve(cmd, with(sample.good))
				require.NoError(t, err)
				require.Equal(t, Value{Env: s.env, Flag: s.flag, Value: s.shown(sample.good), Source: SourceEnv}, value(t, c, s))
			}
			if s.flag != "" {
				c, err = resolve(cmd, with(sample.good), "--"+s.flag+"="+sample.other)
				require.NoError(t, err)
				require.Equal(t, Value{Env: s.env, Flag: s.flag, Value: s.shown(sample.other), Source: SourceFlag}, value(t, c, s), "the flag wins")
			}

			if sample.says == "" {
				return
			}
			var bad error
			if s.env != "" {
				_, bad = resolve(cmd, map[string]string{s.env: sample.bad})
			} else {
				_, bad = resolve(cmd, nil, "--"+s.flag+"="+sample.bad)
			}
			require.Error(t, bad)
			require.ErrorContains(t, bad, s.name()+": ", "the refusal names the variable and the flag")
			require.ErrorContains(t, bad, sample.says)
		})
	}
}

// TestRewrapBatchBeyondTheJobsLimitRefuses: a batch the re-wrap job
// would refuse stops serve before it starts, instead of serving without
// its background job.
func TestRewrapBatchBeyondTheJobsLimitRefuses(t *testing.T) {
	t.Parallel()
	_, err := resolve(Serve, map[string]string{"KEYBROKER_REWRAP_BATCH": "20000"})
	require.EqualError(t, err, `$KEYBROKER_REWRAP_BATCH (--rewrap-batch): "20000": want a whole number of rows between 1 and 10000`)
	var problems Problems
	require.ErrorAs(t, err, &problems)
	require.Len(t, problems, 1)

	c, err := resolve(Serve, map[string]string{"KEYBROKER_REWRAP_BATCH": "10000"})
	require.NoError(t, err)
	require.Equal(t, broker.MaxRewrapBatchSize, c.Rewrap.Batch)
}

// TestEveryProblemAtOnce: an operator fixes a configuration in one go.
func TestEveryProblemAtOnce(t *testing.T) {
	t.Parallel()
	_, err := resolve(Serve, map[string]string{
		"KEYBROKER_REWRAP_BATCH": "0", "KEYBROKER_RATE_LIMIT": "fast", "KEYBROKER_TLS_CERT": "/c.pem",
		"KEYBROKER_JWT_AUDIENCE": "", "KEYBROKER_KEK": "", "KEYBROKER_JWT_LEEWAY": "1h",
	})
	var problems Problems
	require.ErrorAs(t, err, &problems)
	require.Len(t, problems, 6, "%v", err)
	for _, want := range []string{"$KEYBROKER_REWRAP_BATCH (--rewrap-batch)", "$KEYBROKER_RATE_LIMIT (--rate-limit)",
		"$KEYBROKER_JWT_LEEWAY (--jwt-leeway)", "TLS needs both $KEYBROKER_TLS_CERT (--tls-cert) and $KEYBROKER_TLS_KEY (--tls-key)",
		"set $KEYBROKER_JWT_AUDIENCE (--jwt-audience).", "no KEK configured"} {
		require.ErrorContains(t, err, want)
	}
	require.ErrorIs(t, err, ErrNoKEK)
}

func TestCrossChecks(t *testing.T) {
	t.Parallel()
	for name, c := range map[string]struct {
		cmd  Command
		env  map[string]string
		args []string
		says string
	}{
		"NoStore":       {Migrate, map[string]string{"KEYBROKER_DATA_DIR": ""}, []string{"--data-dir="}, "no store: set $DATABASE_URL (--database-url) to a PostgreSQL URL, or $KEYBROKER_DATA_DIR (--data-dir)"},
		"NoIssuer":      {Serve, map[string]string{"KEYBROKER_JWKS_URL": ""}, nil, "no token issuer: set $KEYBROKER_JWKS_URL (--jwks-url)"},
		"BurstWithRate": {Serve, map[string]string{"KEYBROKER_RATE_BURST": "0"}, nil, "$KEYBROKER_RATE_BURST (--rate-burst): must be at least 1 while $KEYBROKER_RATE_LIMIT (--rate-limit) is on"},
		"DevProduction": {Serve, map[string]string{"KEYBROKER_ENV": "production"}, []string{"--dev"}, "--dev refused: $KEYBROKER_ENV is production"},
		"DevToken":      {DevToken, map[string]string{"KEYBROKER_ENV": "production"}, []string{"--user", "a"}, "dev token refused: $KEYBROKER_ENV is production"},
		"KEKIDTwice":    {Serve, map[string]string{"KEYBROKER_KEK_ID": "b"}, nil, "the KEK id is given twice, differently: in $KEYBROKER_KEK_ID (--kek-id) and in the KEK URI"},
		"NoKEK":         {Rewrap, map[string]string{"KEYBROKER_KEK": ""}, nil, "no KEK configured"},
		"Argument":      {Serve, nil, []string{"extra"}, `unexpected argument "extra"`},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			_, err := resolve(c.cmd, c.env, c.args...)
			require.ErrorContains(t, err, c.says)
		})
	}
	_, err := resolve(Serve, nil, "--no-such-flag")
	require.ErrorIs(t, err, ErrUsage)
	c, err := resolve(Serve, map[string]string{"KEYBROKER_RATE_LIMIT": "0", "KEYBROKER_RATE_BURST": "0"})
	require.NoError(t, err, "no burst without a rate limit")
	require.Zero(t, c.Ops.RateLimit)
}

// TestTypedValues: what serve reads, typed.
func TestTypedValues(t *testing.T) {
	t.Parallel()
	c, err := resolve(Serve, map[string]string{"PORT": "4000", "KEYBROKER_TRUSTED_PROXIES": "10.0.0.0/8, 192.168.1.1",
		"KEYBROKER_CORS_ORIGINS": "https://a.test https://b.test", "MANA_SERVICE_KEY": "legacy-service-key"})
	require.NoError(t, err)
	require.Equal(t, ":4000", c.Server.Addr)
	require.Equal(t, 20*time.Second, c.Server.ShutdownTimeout)
	require.Equal(t, []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.168.1.1/32")}, c.Ops.TrustedProxies)
	require.Equal(t, []string{"https://a.test", "https://b.test"}, c.Ops.CORSOrigins)
	require.Equal(t, "legacy-service-key", c.Ops.ServiceKey, "the original service's name for it")
	require.Equal(t, RewrapSchedule{Enabled: true, Interval: time.Minute, Batch: 1000, Rate: 1000}, c.Rewrap)
	require.Equal(t, DefaultDataKeyMaxAge, c.DataKeyMaxAge)
	require.Equal(t, broker.RecoveryProofRequired, c.RecoveryProof)
	require.Equal(t, Log{Level: slog.LevelInfo}, c.Log)
	require.True(t, c.Store.Migrate)
	require.Equal(t, Store{DataDir: DefaultDataDir, Schema: "keybroker", Migrate: true, PoolSize: pgstore.DefaultPoolSize()}, c.Store)

	c, err = resolve(Serve, map[string]string{"PORT": "4000", "KEYBROKER_ADDR": "0.0.0.0:5000"})
	require.NoError(t, err)
	require.Equal(t, "0.0.0.0:5000", c.Server.Addr)

	tool, err := resolve(KEKStatus, nil)
	require.NoError(t, err)
	require.Equal(t, Log{Level: slog.LevelWarn, Format: "text"}, tool.Log, "operator commands log less, as text")

	hc, err := resolve(Healthcheck, map[string]string{"KEYBROKER_ADDR": "127.0.0.1:7"})
	require.NoError(t, err)
	require.Equal(t, "127.0.0.1:7", hc.Server.Addr, "healthcheck follows serve's address")
	_, err = resolve(Healthcheck, nil, "--addr", "x")
	require.ErrorIs(t, err, ErrUsage, "but takes no --addr")
}

// TestKEKSpecs: the KEK URIs are parsed once into specs.
func TestKEKSpecs(t *testing.T) {
	t.Parallel()
	c, err := resolve(Serve, map[string]string{"KEYBROKER_KEK": "awskms:///alias/kb?region=eu-west-1", "KEYBROKER_KEK_ID": "aws-2",
		"KEYBROKER_KEK_RETIRED": "env://MANA_AUTH_KEK, vault-transit://kb?id=vt-1&cache=off"})
	require.NoError(t, err)
	require.Equal(t, &KEKSpec{Role: RoleActive, URI: "awskms:///alias/kb?id=aws-2&region=eu-west-1", ID: "aws-2", Scheme: "awskms", Cached: true,
		Setting: "$KEYBROKER_KEK (--kek)"}, c.KEKs.Active)
	require.Equal(t, []KEKSpec{
		{Role: RoleDecryptOnly, URI: "env://MANA_AUTH_KEK", ID: "env-v1", Scheme: "env", Setting: "$KEYBROKER_KEK_RETIRED (--kek-retired)"},
		{Role: RoleDecryptOnly, URI: "vault-transit://kb?id=vt-1&cache=off", ID: "vt-1", Scheme: "vault-transit", Setting: "$KEYBROKER_KEK_RETIRED (--kek-retired)"},
	}, c.KEKs.Retired)
	require.Equal(t, map[string]Role{"aws-2": RoleActive, "env-v1": RoleDecryptOnly, "vt-1": RoleDecryptOnly}, c.KEKs.Roles())

	legacy, err := resolve(Serve, map[string]string{"KEYBROKER_KEK": "", "MANA_AUTH_KEK": "c2VjcmV0"})
	require.NoError(t, err)
	require.Equal(t, "env-v1", legacy.KEKs.Active.ID, "the original service's variable and id")

	dir := t.TempDir()
	dev, err := resolve(KEKCheck, map[string]string{"KEYBROKER_KEK": "", "KEYBROKER_DATA_DIR": dir}, "--dev")
	require.NoError(t, err)
	require.Equal(t, &KEKSpec{Role: RoleActive, URI: "file://" + filepath.Join(dir, DevKEKFile) + "?id=" + DevKEKID, ID: DevKEKID,
		Scheme: "file", Dev: true, Setting: "the dev KEK"}, dev.KEKs.Active, "operator commands with --dev find the dev KEK")
	require.True(t, dev.KEKs.AllowDevKeys)

	// kek status and vault restore-recovery need no KEK: a bad URI leaves
	// the roles out rather than stopping them.
	status, err := resolve(KEKStatus, map[string]string{"KEYBROKER_KEK": "file:///no/id", "KEYBROKER_KEK_RETIRED": "env://A?id=a"})
	require.NoError(t, err)
	require.Equal(t, map[string]Role{"a": RoleDecryptOnly}, status.KEKs.Roles())
	_, err = resolve(KEKCheck, map[string]string{"KEYBROKER_KEK": "file:///no/id"})
	require.ErrorContains(t, err, "$KEYBROKER_KEK (--kek): kekproviders: ")
}

// TestMalformedKEKURIIsNotRepeated: a KEK URI may carry a token; a
// refusal names the problem, never the secret.
func TestMalformedKEKURIIsNotRepeated(t *testing.T) {
	t.Parallel()
	const secret = "hvs.SUPERSECRETTOKEN"
	for _, env := range []map[string]string{
		{"KEYBROKER_KEK": "vault-transit://kb?token=" + secret + "\x01", "KEYBROKER_KEK_ID": "vt-1"},
		{"KEYBROKER_KEK": "vault-transit://kb?id=vt-1&token=" + secret + "\x01"},
		{"KEYBROKER_KEK_RETIRED": "vault-transit://us%zzer:" + secret + "@kb?id=vt-1"},
	} {
		_, err := resolve(Serve, env)
		require.Error(t, err)
		require.NotContains(t, err.Error(), secret)
	}
}

// TestValuesRedactSecrets: the effective configuration can be printed.
func TestValuesRedactSecrets(t *testing.T) {
	t.Parallel()
	c, err := resolve(Serve, map[string]string{"KEYBROKER_SERVICE_KEY": "s3cret-service-key", "DATABASE_URL": "postgres://kb:pa55word@db/kb",
		"KEYBROKER_KEK":         "vault-transit://kb?id=v1&address=https://vault.test&role_id=s3cret-role",
		"KEYBROKER_KEK_RETIRED": "vault-transit://u:s3cretpw@kb?id=v0, env://OLD?id=e0"})
	require.NoError(t, err)
	var printed strings.Builder
	for _, v := range c.Values() {
		printed.WriteString(v.Env + "=" + v.Value + "\n")
	}
	require.NotContains(t, printed.String(), "s3cret")
	require.NotContains(t, printed.String(), "pa55word")
	require.Contains(t, printed.String(), "KEYBROKER_SERVICE_KEY=REDACTED\n")
	require.Contains(t, printed.String(), "DATABASE_URL=postgres://kb:xxxxx@db/kb\n")
	require.Contains(t, printed.String(), "KEYBROKER_KEK=vault-transit://kb?id=v1&address=https://vault.test&role_id=REDACTED\n")
	require.Contains(t, printed.String(), "KEYBROKER_KEK_RETIRED=vault-transit://u:REDACTED@kb?id=v0 env://OLD?id=e0\n")
}

// TestDevMode: loopback unless an address is given; no issuer needed.
func TestDevMode(t *testing.T) {
	t.Parallel()
	c, err := resolve(Serve, map[string]string{"KEYBROKER_JWKS_URL": "", "PORT": "0", "KEYBROKER_KEK": ""}, "--dev")
	require.NoError(t, err)
	require.Equal(t, "127.0.0.1:0", c.Server.Addr)
	require.True(t, c.KEKs.Active.Dev)
	c.Tokens.UseIssuer("http://127.0.0.1:1/jwks.json", "keybroker-dev")
	require.Equal(t, Tokens{JWKSURL: "http://127.0.0.1:1/jwks.json", Issuer: "keybroker-dev", Audience: "keybroker-dev",
		MaxLifetime: time.Hour, Leeway: 30 * time.Second}, c.Tokens)

	c, err = resolve(Serve, map[string]string{"KEYBROKER_ADDR": "0.0.0.0:3001"}, "--dev")
	require.NoError(t, err)
	require.Equal(t, "0.0.0.0:3001", c.Server.Addr, "an explicit address stands")
	require.False(t, c.KEKs.Active.Dev, "a configured KEK stands")
}

// TestUnpinnedGuessIsTheJWKSOrigin: the values the refusal suggests are
// the JWKS URL's origin, never its path or credentials in it.
func TestUnpinnedGuessIsTheJWKSOrigin(t *testing.T) {
	t.Parallel()
	_, err := resolve(Serve, map[string]string{"KEYBROKER_JWKS_URL": "https://user:pw@auth.example.org:8443/api/auth/jwks",
		"KEYBROKER_JWT_ISSUER": "", "KEYBROKER_JWT_AUDIENCE": ""})
	require.Error(t, err)
	msg := err.Error()
	require.Contains(t, msg, "KEYBROKER_JWT_ISSUER=https://auth.example.org:8443\n")
	require.Contains(t, msg, "KEYBROKER_JWT_AUDIENCE=https://auth.example.org:8443\n")
	require.NotContains(t, msg, "pw")
	require.NotContains(t, msg, "/api/auth")
}

// TestNames: how messages name settings.
func TestNames(t *testing.T) {
	t.Parallel()
	require.Equal(t, "$KEYBROKER_KEK_RETIRED (--kek-retired)", Name("kek-retired"))
	require.Equal(t, "$PORT", Name("PORT"))
	require.Equal(t, "--batch", Name("batch"))
	require.Equal(t, "$KEYBROKER_SERVICE_KEY or $MANA_SERVICE_KEY (--service-key)", Name("service-key"))
	require.Equal(t, "KEYBROKER_RECOVERY_PROOF", Env("recovery-proof"))
	require.Panics(t, func() { Name("no-such-setting") })
	require.True(t, errors.Is(Problems{ErrNoKEK}, ErrNoKEK))
}

// TestHelpIsNotAMistake: -h and --help return the help for stdout, and
// each flag's line names its variable only when it has one.
func TestHelpIsNotAMistake(t *testing.T) {
	t.Parallel()
	for _, arg := range []string{"-h", "--help", "-help"} {
		var stderr strings.Builder
		_, err := Resolve(Rewrap, []string{arg}, func(string) string { return "" }, &stderr, "Usage: keybroker rewrap [flags]\n\nFlags:\n")
		require.ErrorIs(t, err, ErrHelp, arg)
		var help *HelpError
		require.ErrorAs(t, err, &help)
		require.Empty(t, stderr.String(), "help is not an error message")
		require.Contains(t, help.Text, "Usage: keybroker rewrap [flags]")
		require.Regexp(t, `--batch ROWS\n\s+rows per transaction \(default 1000\)\n`, help.Text, "a flag alone names no variable")
		require.Contains(t, help.Text, "($KEYBROKER_KEK)")
		require.Contains(t, help.Text, "($DATABASE_URL)")
	}
	var stderr strings.Builder
	_, err := Resolve(Rewrap, []string{"--batch"}, func(string) string { return "" }, &stderr, "")
	require.ErrorIs(t, err, ErrUsage)
	require.Contains(t, stderr.String(), "flag needs an argument")
}

// TestPoolSize: the pool size is a setting, or the URL's pool_max_conns;
// both at once must agree.
func TestPoolSize(t *testing.T) {
	t.Parallel()
	c, err := resolve(Serve, map[string]string{"DATABASE_URL": "postgres://kb@db/kb?pool_max_conns=12"})
	require.NoError(t, err)
	require.Equal(t, 12, c.Store.PoolSize, "the URL's pool_max_conns")
	c, err = resolve(Serve, map[string]string{"KEYBROKER_DB_POOL_SIZE": "6"})
	require.NoError(t, err)
	require.Equal(t, 6, c.Store.PoolSize)
	_, err = resolve(Serve, map[string]string{"DATABASE_URL": "postgres://kb@db/kb?pool_max_conns=12", "KEYBROKER_DB_POOL_SIZE": "6"})
	require.ErrorContains(t, err, "the pool size is given twice, differently: $KEYBROKER_DB_POOL_SIZE (--db-pool-size)=6 and pool_max_conns=12 in $DATABASE_URL (--database-url)")
}

// TestConfigCommandsReadServe: config check and show read what serve
// reads, and hand the configuration back beside its problems.
func TestConfigCommandsReadServe(t *testing.T) {
	t.Parallel()
	c, err := resolve(ConfigCheck, map[string]string{"KEYBROKER_JWKS_URL": "https://auth.test/jwks", "KEYBROKER_JWT_ISSUER": "https://auth.test",
		"KEYBROKER_JWT_AUDIENCE": "https://auth.test", "KEYBROKER_REWRAP_BATCH": "0"}, "--timeout", "5s")
	require.ErrorContains(t, err, "$KEYBROKER_REWRAP_BATCH (--rewrap-batch)")
	require.NotNil(t, c, "the configuration comes with its problems")
	require.Equal(t, "https://auth.test/jwks", c.Tokens.JWKSURL)
	require.Equal(t, 5*time.Second, c.Tool.Timeout)
	_, err = resolve(ConfigShow, nil, "--timeout", "5s")
	require.ErrorIs(t, err, ErrUsage, "show probes nothing: no timeout")
}

// TestKEKList: $KEYBROKER_KEK may list several KMS KEKs; the first is the
// active one, the others wrap every data key beside it. What cannot share
// the data keys' wrapping is refused, naming why.
func TestKEKList(t *testing.T) {
	t.Parallel()
	c, err := resolve(Serve, map[string]string{"KEYBROKER_KEK": "awskms:///alias/kb?id=aws-eu&region=eu-central-1, " +
		"gcpkms://projects/p/locations/l/keyRings/r/cryptoKeys/k?id=gcp-1  vault-transit://kb?id=vt-1"})
	require.NoError(t, err)
	require.Equal(t, "aws-eu", c.KEKs.Active.ID)
	require.Len(t, c.KEKs.Also, 2)
	require.Equal(t, []string{"gcp-1", "vt-1"}, []string{c.KEKs.Also[0].ID, c.KEKs.Also[1].ID})
	for _, spec := range c.KEKs.Also {
		require.Equal(t, RoleActive, spec.Role)
		require.True(t, spec.Cached)
		require.Equal(t, "$KEYBROKER_KEK (--kek)", spec.Setting)
	}
	var ids []string
	for _, spec := range c.KEKs.All() {
		ids = append(ids, spec.ID)
	}
	require.Equal(t, []string{"aws-eu", "gcp-1", "vt-1"}, ids)

	refused := map[string]struct{ env map[string]string }{
		"is not a remote KEK in cached envelope mode": {map[string]string{"KEYBROKER_KEK": "awskms:///alias/kb?id=a&region=r awskms:///alias/kb2?id=b&region=r&cache=off"}},
		`"env-v1" is not a remote KEK`:                {map[string]string{"KEYBROKER_KEK": "env://MANA_AUTH_KEK awskms:///alias/kb?id=a&region=r"}},
		"put id= in each URI":                         {map[string]string{"KEYBROKER_KEK": "awskms:///alias/kb?region=r awskms:///alias/kb2?id=b&region=r", "KEYBROKER_KEK_ID": "a"}},
		"at most 4":                                   {map[string]string{"KEYBROKER_KEK": "awskms:///k1?id=a awskms:///k2?id=b awskms:///k3?id=c awskms:///k4?id=d awskms:///k5?id=e"}},
		`the KEK id "a" is configured twice`:          {map[string]string{"KEYBROKER_KEK": "awskms:///k1?id=a awskms:///k2?id=a"}},
	}
	for want, tc := range refused {
		_, err := resolve(Serve, tc.env)
		require.ErrorContains(t, err, want)
	}
}
