package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"time"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/pgstore"
	"github.com/keybroker/keybroker/vaultapi"
	"github.com/keybroker/keybroker/vaultapi/jwtauth"
)

// Environment variables that are not settings of their own.
const (
	// EnvEnv=production makes --dev and dev token refuse to run.
	EnvEnv = "KEYBROKER_ENV"
	// EnvLegacyKEK is the original service's KEK, read by the env://
	// provider; it is the active KEK when none is configured.
	EnvLegacyKEK = "MANA_AUTH_KEK"
)

// Defaults that other code shows or uses.
const (
	DefaultDataDir = "./.keybroker"
	DefaultPort    = "3001"
	// DefaultDataKeyMaxAge is how long a data key of cached envelope mode
	// wraps new rows before a replica mints the next one. Every data
	// key's plaintext sits in every replica's memory; rotating it bounds
	// how long a key that leaked unnoticed (a core dump, a heap
	// snapshot) opens the rows stored after the leak, and the old key is
	// deleted once the re-wrap job has moved its rows. 90 days is the
	// shortest automatic rotation period AWS KMS offers for its own keys
	// and a common cryptoperiod policy; it costs one KMS call per replica
	// and one pass of local re-wraps (about 16,000 rows/s) per quarter.
	DefaultDataKeyMaxAge = 90 * 24 * time.Hour
	// Defaults of the operations settings. The rate limit is generous for
	// a browser (a sign-in makes a handful of vault calls) and still caps
	// what a stolen token can make the KMS do.
	DefaultRateLimit     = 10
	DefaultRateBurst     = 50
	DefaultReadyInterval = 10 * time.Second
	// MinReadyInterval is the shortest readiness poll.
	MinReadyInterval = 100 * time.Millisecond
)

const storeCmds = Serve | Migrate | Tools

// The settings, in the order -h lists them and Values prints them.
var (
	port = &setting{env: "PORT", def: DefaultPort, cmds: Serve | Healthcheck,
		apply: func(c *Config, v string) error {
			if n, err := strconv.Atoi(v); err != nil || n < 0 || n > 65535 {
				return fmt.Errorf("%q: want a port number, 0 to 65535", v)
			}
			c.Server.Addr = ":" + v
			return nil
		}}
	addr = &setting{env: "KEYBROKER_ADDR", flag: "addr", value: "HOST:PORT", cmds: Serve | Healthcheck, flagCmds: Serve,
		usage: "listen address (default :$PORT)",
		apply: func(c *Config, v string) error {
			if v == "" {
				return nil
			}
			if _, port, err := net.SplitHostPort(v); err != nil || port == "" {
				return fmt.Errorf("%q: want host:port, e.g. 127.0.0.1:3001 or :3001", v)
			}
			c.Server.Addr = v
			return nil
		}}
	databaseURL = &setting{env: "DATABASE_URL", flag: "database-url", value: "URL", cmds: storeCmds,
		usage: "PostgreSQL URL; without one the embedded SQLite store in --data-dir is used",
		apply: func(c *Config, v string) error {
			// A URL that does not parse is a mistake to report now, with the
			// part that is wrong, not when the first connection is made.
			if err := pgstore.CheckURL(v); v != "" && err != nil {
				return err
			}
			c.Store.DatabaseURL = v
			return nil
		}}
	dbPoolSize = &setting{env: "KEYBROKER_DB_POOL_SIZE", flag: "db-pool-size", value: "N", def: strconv.Itoa(pgstore.DefaultPoolSize()), cmds: Serve,
		usage: "most PostgreSQL connections of this process; default max(8, 4 per CPU). Each replica opens up to this many: keep replicas × this under the server's max_connections",
		apply: func(c *Config, v string) (err error) {
			c.Store.PoolSize, err = parseCount(v, 1, 10000, "connections")
			return err
		}}
	dataDir = &setting{env: "KEYBROKER_DATA_DIR", flag: "data-dir", value: "DIR", def: DefaultDataDir, cmds: storeCmds | DevToken,
		usage: "directory of the embedded store and of dev-mode files",
		apply: text(func(c *Config) *string { return &c.Store.DataDir })}
	schema = &setting{env: "KEYBROKER_SCHEMA", flag: "schema", value: "NAME", def: "keybroker", cmds: storeCmds,
		usage: "database schema; \"auth\" adopts the original service's tables",
		apply: func(c *Config, v string) error {
			if v == "" {
				return errors.New("must not be empty")
			}
			c.Store.Schema = v
			return nil
		}}
	migrate = &setting{env: "KEYBROKER_MIGRATE", flag: "migrate", def: "true", isBool: true, cmds: Serve,
		usage: "apply migrations at start",
		apply: boolean(func(c *Config) *bool { return &c.Store.Migrate })}
	allowPrivileged = &setting{env: "KEYBROKER_ALLOW_PRIVILEGED_DB_ROLE", flag: "allow-privileged-db-role", def: "false", isBool: true, cmds: storeCmds,
		usage: "TESTS ONLY: connect even as a superuser or a BYPASSRLS role, with which row-level security is not enforced",
		apply: boolean(func(c *Config) *bool { return &c.Store.AllowPrivileged })}
	logLevel = &setting{env: "KEYBROKER_LOG_LEVEL", flag: "log-level", value: "LEVEL", def: "info", toolDef: "warn", cmds: storeCmds,
		usage: "debug, info, warn or error",
		apply: func(c *Config, v string) error {
			if err := c.Log.Level.UnmarshalText([]byte(v)); err != nil {
				return fmt.Errorf("%q: use debug, info, warn or error", v)
			}
			return nil
		}}
	logFormat = &setting{env: "KEYBROKER_LOG_FORMAT", flag: "log-format", value: "FORMAT", toolDef: "text", cmds: storeCmds,
		usage: "json or text; by default serve writes text on a terminal, json otherwise",
		apply: func(c *Config, v string) error {
			if v != "" && v != "json" && v != "text" {
				return fmt.Errorf("%q: use json or text", v)
			}
			c.Log.Format = v
			return nil
		}}
	kekURI = &setting{env: "KEYBROKER_KEK", flag: "kek", value: "URI", cmds: Serve | Tools,
		usage: "active KEK URI, e.g. env://MANA_AUTH_KEK or file:///etc/keybroker/kek?id=file-2026; or up to 4 KMS KEK URIs, separated by spaces or commas, each wrapping every data key"}
	kekID = &setting{env: "KEYBROKER_KEK_ID", flag: "kek-id", value: "ID", cmds: Serve | Tools,
		usage: "id of the active KEK, if not in its URI"}
	kekRetired = &setting{env: "KEYBROKER_KEK_RETIRED", flag: "kek-retired", value: "URIS", cmds: Serve | Tools,
		usage: "decrypt-only KEK URIs, separated by spaces or commas"}
	dev = &setting{flag: "dev", def: "false", isBool: true, cmds: Serve | Tools,
		usage: "dev mode: 127.0.0.1, a generated KEK (<data dir>/dev-kek), a built-in token issuer (refused when $" + EnvEnv + "=production); " +
			"operator commands: the dev KEK, and the all-zero KEK, are accepted",
		apply: func(c *Config, v string) (err error) {
			c.Dev, err = parseBool(v)
			c.KEKs.AllowDevKeys = c.Dev
			return err
		}}
	jwksURL = &setting{env: "KEYBROKER_JWKS_URL", flag: "jwks-url", value: "URL", cmds: Serve,
		usage: "JWKS URL of the token issuer",
		apply: func(c *Config, v string) error {
			if u, err := url.Parse(v); v != "" && (err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "") {
				return fmt.Errorf("%q: want an absolute http or https URL, e.g. https://auth.example.com/api/auth/jwks", v)
			}
			c.Tokens.JWKSURL = v
			return nil
		}}
	jwtIssuer = &setting{env: "KEYBROKER_JWT_ISSUER", flag: "jwt-issuer", value: "ISS", cmds: Serve,
		usage: "required iss claim; Better Auth: the origin of its base URL, e.g. https://auth.example.com",
		apply: text(func(c *Config) *string { return &c.Tokens.Issuer })}
	jwtAudience = &setting{env: "KEYBROKER_JWT_AUDIENCE", flag: "jwt-audience", value: "AUD", cmds: Serve,
		usage: "required aud claim; Better Auth: the origin of its base URL, e.g. https://auth.example.com",
		apply: text(func(c *Config) *string { return &c.Tokens.Audience })}
	jwtUnpinned = &setting{env: "KEYBROKER_JWT_UNPINNED", flag: "jwt-unpinned", def: "false", isBool: true, cmds: Serve,
		usage: "start without --jwt-issuer and --jwt-audience, for an issuer that sets neither: any token it signs is accepted",
		apply: boolean(func(c *Config) *bool { return &c.Tokens.Unpinned })}
	jwtMaxLifetime = &setting{env: "KEYBROKER_JWT_MAX_LIFETIME", flag: "jwt-max-lifetime", value: "DURATION", def: jwtauth.DefaultMaxLifetime.String(), cmds: Serve,
		usage: "tokens whose exp is further than this from their iat or from now are refused",
		apply: duration(func(c *Config) *time.Duration { return &c.Tokens.MaxLifetime }, jwtauth.MinMaxLifetime, 0)}
	jwtLeeway = &setting{env: "KEYBROKER_JWT_LEEWAY", flag: "jwt-leeway", value: "DURATION", def: jwtauth.DefaultLeeway.String(), cmds: Serve,
		usage: "clock skew tolerated on a token's exp, nbf and iat and on its lifetime",
		apply: duration(func(c *Config) *time.Duration { return &c.Tokens.Leeway }, time.Second, jwtauth.MaxLeeway)}
	shutdownTimeout = &setting{env: "KEYBROKER_SHUTDOWN_TIMEOUT", flag: "shutdown-timeout", value: "DURATION", def: "20s", cmds: Serve,
		usage: "grace period for in-flight requests on SIGTERM",
		apply: duration(func(c *Config) *time.Duration { return &c.Server.ShutdownTimeout }, 0, 0)}
	recoveryProof = &setting{env: "KEYBROKER_RECOVERY_PROOF", flag: "recovery-proof", value: "POLICY", def: string(broker.RecoveryProofRequired), cmds: Serve,
		usage: "required: replacing a zero-knowledge recovery wrap needs keyProof; optional: accepted without it, the replaced wrap kept restorable",
		apply: func(c *Config, v string) (err error) {
			c.RecoveryProof, err = broker.ParseRecoveryProofPolicy(v)
			return err
		}}
	grantDefaultKey = &setting{env: "MANA_AI_PUBLIC_KEY_PEM", cmds: Serve | GrantCheck,
		usage: "mission grants: the default recipient's RSA public key, the PEM text (\\n for newlines on one line)",
		apply: text(func(c *Config) *string { return &c.Grants.DefaultPEM })}
	grantRecipients = &setting{env: "KEYBROKER_GRANT_RECIPIENTS", flag: "grant-recipients", cmds: Serve | GrantCheck,
		usage: "mission grant recipients: name=/path/to/public-key.pem entries, separated by spaces or commas; the default recipient is $MANA_AI_PUBLIC_KEY_PEM",
		apply: text(func(c *Config) *string { return &c.Grants.Recipients })}
	dataKeyMaxAge = &setting{env: "KEYBROKER_DATA_KEY_MAX_AGE", flag: "data-key-max-age", value: "AGE", def: "90d", cmds: Serve,
		usage: "cached envelope mode: mint a new data key when the newest is this old, e.g. 90d or 2160h; 0 rotates only on demand (keybroker kek rotate-data-key)",
		apply: func(c *Config, v string) (err error) { c.DataKeyMaxAge, err = parseAge(v); return err }}
	rewrap = &setting{env: "KEYBROKER_REWRAP", flag: "rewrap", def: "true", isBool: true, cmds: Serve,
		usage: "run the re-wrap job in the background: moves rows off decrypt-only KEKs and format 1",
		apply: boolean(func(c *Config) *bool { return &c.Rewrap.Enabled })}
	rewrapInterval = &setting{env: "KEYBROKER_REWRAP_INTERVAL", flag: "rewrap-interval", value: "DURATION", def: "1m", cmds: Serve,
		usage: "how often a replica looks for rows to re-wrap, or takes over from a runner that died",
		apply: duration(func(c *Config) *time.Duration { return &c.Rewrap.Interval }, broker.MinRewrapInterval, 0)}
	rewrapBatch = &setting{env: "KEYBROKER_REWRAP_BATCH", flag: "rewrap-batch", value: "ROWS", def: strconv.Itoa(broker.DefaultRewrapBatchSize), cmds: Serve,
		usage: "rows per re-wrap transaction",
		apply: func(c *Config, v string) (err error) { c.Rewrap.Batch, err = parseBatch(v); return err }}
	rewrapRate = &setting{env: "KEYBROKER_REWRAP_RATE", flag: "rewrap-rate", value: "ROWS_PER_S", def: "1000", cmds: Serve,
		usage: "re-wrap rows per second at most, 0 for no limit",
		apply: func(c *Config, v string) (err error) {
			c.Rewrap.Rate, err = parseRate(v, "rows per second")
			return err
		}}
	auditSealInterval = &setting{env: "KEYBROKER_AUDIT_SEAL_INTERVAL", flag: "audit-seal-interval", value: "DURATION", def: "1m", cmds: Serve | AuditVerify,
		usage: "how often serve seals the audit rows older than 15s into a checkpoint (docs/audit.md); audit verify reports sealing stalled past three intervals",
		apply: duration(func(c *Config) *time.Duration { return &c.AuditSealInterval }, time.Second, 24*time.Hour)}
	rolloutHeartbeat = &setting{env: "KEYBROKER_ROLLOUT_HEARTBEAT", flag: "rollout-heartbeat", value: "DURATION", def: "10s", cmds: Serve | Rewrap,
		usage: "PostgreSQL: how often a replica announces which KEKs it holds; it counts until 3 heartbeats pass without one. 0 announces nothing and waits for no one (keybroker rewrap then moves rows whatever the announcements say)",
		apply: func(c *Config, v string) (err error) {
			if d, perr := time.ParseDuration(v); perr == nil && d == 0 {
				c.Rollout.Heartbeat = 0
				return nil
			}
			c.Rollout.Heartbeat, err = parseDuration(v, time.Second, 10*time.Minute)
			return err
		}}
	rolloutReplicas = &setting{env: "KEYBROKER_ROLLOUT_REPLICAS", flag: "rollout-replicas", value: "N", def: "0", cmds: Serve | KEKStatus,
		usage: "PostgreSQL: replicas that must announce a newly configured KEK before it is used (covers replicas of releases that do not announce); 0: only those that announce count",
		apply: func(c *Config, v string) (err error) {
			c.Rollout.Replicas, err = parseCount(v, 0, 10000, "replicas")
			return err
		}}
	auditRetention = &setting{env: "KEYBROKER_AUDIT_RETENTION", flag: "audit-retention", value: "AGE", def: "0", cmds: Serve | AuditUpkeep,
		usage: "drop audit rows older than this, e.g. 400d or 9600h (at least 1d; PostgreSQL drops whole days); 0 keeps every row",
		apply: func(c *Config, v string) error {
			d, err := parseAge(v)
			if err == nil && d != 0 && d < broker.MinAuditRetention {
				err = fmt.Errorf("%q: use 0 (keep every row) or at least 1d", v)
			}
			c.AuditRetention = d
			return err
		}}
	metricsAddr = &setting{env: "KEYBROKER_METRICS_ADDR", flag: "metrics-addr", value: "HOST:PORT", cmds: Serve,
		usage: "serve /metrics on this address only (e.g. 127.0.0.1:9090) instead of on --addr",
		apply: text(func(c *Config) *string { return &c.Ops.MetricsAddr })}
	corsOrigins = &setting{env: "KEYBROKER_CORS_ORIGINS", flag: "cors-origins", value: "ORIGINS", cmds: Serve,
		usage: "browser origins allowed to call the vault routes, e.g. https://app.example.com, separated by spaces or commas",
		apply: func(c *Config, v string) error { c.Ops.CORSOrigins = SplitList(v); return nil }}
	trustedProxies = &setting{env: "KEYBROKER_TRUSTED_PROXIES", flag: "trusted-proxies", value: "CIDRS", cmds: Serve,
		usage: "CIDRs of reverse proxies whose X-Forwarded-For is believed, separated by spaces or commas",
		apply: func(c *Config, v string) (err error) {
			c.Ops.TrustedProxies, err = vaultapi.ParseTrustedProxies(SplitList(v))
			return err
		}}
	rateLimit = &setting{env: "KEYBROKER_RATE_LIMIT", flag: "rate-limit", value: "PER_S", def: strconv.Itoa(DefaultRateLimit), cmds: Serve,
		usage: "vault requests per second per user; 0 disables",
		apply: func(c *Config, v string) (err error) {
			c.Ops.RateLimit, err = parseRate(v, "requests per second, e.g. 10 or 0.5 (0 disables)")
			return err
		}}
	rateBurst = &setting{env: "KEYBROKER_RATE_BURST", flag: "rate-burst", value: "N", def: strconv.Itoa(DefaultRateBurst), cmds: Serve,
		usage: "vault requests a user may make at once",
		apply: func(c *Config, v string) (err error) {
			c.Ops.RateBurst, err = strconv.Atoi(v)
			if err != nil || c.Ops.RateBurst < 0 {
				return fmt.Errorf("%q: want a whole number of requests, not negative", v)
			}
			return nil
		}}
	serviceKey = &setting{env: "KEYBROKER_SERVICE_KEY", altEnv: "MANA_SERVICE_KEY", flag: "service-key", value: "KEY", secret: true, cmds: Serve,
		usage: "key the auth service sends as X-Service-Key; enables the service routes. Prefer the variable: flags show in ps",
		apply: text(func(c *Config) *string { return &c.Ops.ServiceKey })}
	tlsCert = &setting{env: "KEYBROKER_TLS_CERT", flag: "tls-cert", value: "PATH", cmds: Serve | Healthcheck, flagCmds: Serve,
		usage: "PEM certificate chain; with --tls-key serves HTTPS, reloaded on SIGHUP",
		apply: text(func(c *Config) *string { return &c.Ops.TLSCert })}
	tlsKey = &setting{env: "KEYBROKER_TLS_KEY", flag: "tls-key", value: "PATH", cmds: Serve,
		usage: "PEM private key of --tls-cert",
		apply: text(func(c *Config) *string { return &c.Ops.TLSKey })}
	readyInterval = &setting{env: "KEYBROKER_READY_INTERVAL", flag: "ready-interval", value: "DURATION", def: DefaultReadyInterval.String(), cmds: Serve,
		usage: "how often /readyz's checks poll the store, the KEKs and the JWKS",
		apply: duration(func(c *Config) *time.Duration { return &c.Ops.ReadyInterval }, MinReadyInterval, 0)}

	// The operator commands' own flags.
	toolDryRun = &setting{flag: "dry-run", def: "false", isBool: true, cmds: Rewrap,
		usage: "unwrap every row that would move, write nothing, report what would move and fail",
		apply: boolean(func(c *Config) *bool { return &c.Tool.DryRun })}
	toolBatch = &setting{flag: "batch", value: "ROWS", def: strconv.Itoa(broker.DefaultRewrapBatchSize), cmds: Rewrap,
		usage: "rows per transaction",
		apply: func(c *Config, v string) (err error) { c.Tool.Batch, err = parseBatch(v); return err }}
	toolRate = &setting{flag: "rate", value: "ROWS_PER_S", def: "0", cmds: Rewrap,
		usage: "rows per second at most; 0 for no limit",
		apply: func(c *Config, v string) (err error) { c.Tool.Rate, err = parseRate(v, "rows per second"); return err }}
	toolConcurrency = &setting{flag: "concurrency", value: "N", def: "8", cmds: Rewrap,
		usage: "rows whose KEK calls run at once (helps remote KEKs)",
		apply: func(c *Config, v string) (err error) {
			c.Tool.Concurrency, err = strconv.Atoi(v)
			if err != nil || c.Tool.Concurrency < 1 {
				return fmt.Errorf("%q: want a whole number, at least 1", v)
			}
			return nil
		}}
	toolProgressEvery = &setting{flag: "progress-every", value: "DURATION", def: "5s", cmds: Rewrap,
		usage: "when stderr is not a terminal: a progress line at most this often (0: every batch)",
		apply: duration(func(c *Config) *time.Duration { return &c.Tool.ProgressEvery }, 0, 0)}
	toolCheckTimeout = &setting{flag: "timeout", value: "DURATION", def: "30s", cmds: KEKCheck | ConfigCheck,
		usage: "bound on each check (a KEK, the database, the JWKS)",
		apply: duration(func(c *Config) *time.Duration { return &c.Tool.Timeout }, time.Second, 0)}
	toolAlgorithm = &setting{flag: "algorithm", value: "ALG", def: "hpke-mlkem768-x25519", cmds: GrantKeygen,
		usage: "the worker key's algorithm: rsa-oaep-256, hpke-x25519 or hpke-mlkem768-x25519",
		apply: text(func(c *Config) *string { return &c.Tool.Algorithm })}
	toolPrivateKey = &setting{flag: "private-key", value: "PATH", cmds: GrantKeygen,
		usage: "file to write the private key to (0600; must not exist); required",
		apply: text(func(c *Config) *string { return &c.Tool.PrivateKey })}
	toolPublicKey = &setting{flag: "public-key", value: "PATH", cmds: GrantKeygen,
		usage: "file to write the public key to (default: stdout)",
		apply: text(func(c *Config) *string { return &c.Tool.PublicKey })}
	toolUser = &setting{flag: "user", value: "ID", cmds: VaultRestoreRecovery | DevToken,
		usage: "the user id (a token's subject)",
		apply: text(func(c *Config) *string { return &c.Tool.User })}
	toolDiscard = &setting{flag: "discard", def: "false", isBool: true, cmds: VaultRestoreRecovery,
		usage: "forget the kept recovery wrap instead of restoring it",
		apply: boolean(func(c *Config) *bool { return &c.Tool.Discard })}
	toolTTL = &setting{flag: "ttl", value: "DURATION", def: "1h", cmds: DevToken,
		usage: "token lifetime",
		apply: duration(func(c *Config) *time.Duration { return &c.Tool.TTL }, time.Second, 0)}
	toolCursorFile = &setting{flag: "cursor-file", value: "PATH", cmds: AuditExport,
		usage: "file of the export's cursor: read at start (absent: from the oldest row), replaced after every batch written",
		apply: text(func(c *Config) *string { return &c.Tool.CursorFile })}
	toolFollow = &setting{flag: "follow", def: "false", isBool: true, cmds: AuditExport,
		usage: "keep running: write new rows as they settle, polling every second",
		apply: boolean(func(c *Config) *bool { return &c.Tool.Follow })}
	toolURL = &setting{flag: "url", value: "URL", cmds: Healthcheck,
		usage: "URL to GET (default /healthz on the address serve listens on: https when $KEYBROKER_TLS_CERT is set)",
		apply: func(c *Config, v string) error {
			if u, err := url.Parse(v); v != "" && (err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "") {
				return fmt.Errorf("%q: want http://host:port/path or https://host:port/path", v)
			}
			c.Tool.URL = v
			return nil
		}}
	toolCAFile = &setting{flag: "ca-file", value: "PATH", cmds: Healthcheck,
		usage: "PEM certificates to trust for https (default: the certificate serve presents, $KEYBROKER_TLS_CERT, else the system's roots)",
		apply: text(func(c *Config) *string { return &c.Tool.CAFile })}
	toolHealthTimeout = &setting{flag: "timeout", value: "DURATION", def: "3s", cmds: Healthcheck,
		usage: "give up after this long",
		apply: duration(func(c *Config) *time.Duration { return &c.Tool.Timeout }, 10*time.Millisecond, 0)}
)

// settings is the table. Order matters where a setting reads another's
// result: the address after the port, --dev before nothing it depends on.
var settings = []*setting{
	port, addr, databaseURL, dbPoolSize, dataDir, schema, migrate, allowPrivileged, logLevel, logFormat,
	kekURI, kekID, kekRetired, dev,
	jwksURL, jwtIssuer, jwtAudience, jwtUnpinned, jwtMaxLifetime, jwtLeeway,
	shutdownTimeout, recoveryProof, grantDefaultKey, grantRecipients, dataKeyMaxAge,
	rewrap, rewrapInterval, rewrapBatch, rewrapRate, auditSealInterval, auditRetention, rolloutHeartbeat, rolloutReplicas,
	metricsAddr, corsOrigins, trustedProxies, rateLimit, rateBurst, serviceKey, tlsCert, tlsKey, readyInterval,
	toolDryRun, toolBatch, toolRate, toolConcurrency, toolProgressEvery, toolCheckTimeout, toolUser, toolDiscard, toolTTL, toolAlgorithm, toolPrivateKey, toolPublicKey,
	toolURL, toolCAFile, toolHealthTimeout, toolCursorFile, toolFollow,
}

// Setting describes one setting for documentation and its tests.
type Setting struct {
	Env, AltEnv, Flag, Default string
	// Usage is what the flag's help says; IsBool a flag that stands
	// alone (--dev).
	Usage  string
	IsBool bool
	// Commands are the commands that read it; FlagCommands those that
	// take its flag.
	Commands, FlagCommands Command
}

// lastCommand is the highest bit of Command.
const lastCommand = AuditUpkeep

// Settings lists the table.
func Settings() []Setting {
	out := make([]Setting, len(settings))
	for i, s := range settings {
		var cmds, flagCmds Command
		for cmd := Serve; cmd <= lastCommand; cmd <<= 1 {
			if s.in(cmd) {
				cmds |= cmd
				if s.flag != "" && s.flagIn(cmd) {
					flagCmds |= cmd
				}
			}
		}
		out[i] = Setting{Env: s.env, AltEnv: s.altEnv, Flag: s.flag, Default: s.def, Usage: s.usage, IsBool: s.isBool,
			Commands: cmds, FlagCommands: flagCmds}
	}
	return out
}

// Name is how a message names the setting whose flag is flag, or, for a
// setting without one, whose variable is flag: "$KEYBROKER_KEK_RETIRED
// (--kek-retired)". It panics on a name the table does not have.
func Name(flag string) string {
	for _, s := range settings {
		if s.flag == flag || (s.flag == "" && s.env == flag) {
			return s.name()
		}
	}
	panic("config: no setting " + flag)
}

// Env is the environment variable of the setting whose flag is flag. It
// panics on a flag the table does not have, or one without a variable.
func Env(flag string) string {
	for _, s := range settings {
		if s.flag == flag && s.env != "" {
			return s.env
		}
	}
	panic("config: no variable for --" + flag)
}
