// Package kekproviders opens a KEK from a URI. Each provider lives in its
// own package and implements the contract of package kek; this one holds
// the single factory that picks one by scheme, and Check, the probe
// behind `keybroker kek check`.
//
// URI forms (docs/providers.md has the full table):
//
//	env://VARIABLE[?id=ID]                 base64 of 32 bytes in $VARIABLE
//	file:///path/to/kek?id=ID              32 raw bytes or base64 text in a file
//	systemd-credential://NAME?id=ID        $CREDENTIALS_DIRECTORY/NAME
//	docker-secret://NAME?id=ID             /run/secrets/NAME
//	awskms:///KEY?id=ID[&region=R][&endpoint=URL][&profile=P][&timeout=D][&max_attempts=N][&max_inflight=N]
//	                                       KEY: alias/NAME, a key id, a key or alias ARN
//	gcpkms://projects/P/locations/L/keyRings/R/cryptoKeys/K?id=ID[&endpoint=HOST:PORT][&timeout=D]
//	vault-transit://KEY?id=ID[&mount=transit][&address=URL][&namespace=NS][&timeout=D][&max_retries=N]
//	    [&auth=token][&token_file=PATH]                      token: token_file or VAULT_TOKEN
//	    &auth=approle&role_id=R|role_id_file=PATH[&secret_id_file=PATH][&auth_mount=approle]
//	    &auth=kubernetes&role=R[&jwt_file=PATH][&auth_mount=kubernetes]
//	pkcs11:token=LABEL;object=KEY?module-path=/path/module.so&pin-source=file:/path/pin&id=ID[&timeout=D][&max_sessions=N]
//	                                       RFC 7512; pin-source=systemd-credential:NAME too; needs cgo
//
// Every KEK has a stable id, recorded on each row it wraps. It comes from
// the URI's id parameter; env://MANA_AUTH_KEK defaults to "env-v1", the
// id the original service wrote. Any other query parameter must be one
// the provider knows: a misspelt one is an error, not a silent default.
package kekproviders

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"

	"google.golang.org/api/option"

	"github.com/keybroker/keybroker/kek"
	"github.com/keybroker/keybroker/kekproviders/awskms"
	"github.com/keybroker/keybroker/kekproviders/docker"
	"github.com/keybroker/keybroker/kekproviders/env"
	"github.com/keybroker/keybroker/kekproviders/file"
	"github.com/keybroker/keybroker/kekproviders/gcpkms"
	"github.com/keybroker/keybroker/kekproviders/internal/uriparam"
	"github.com/keybroker/keybroker/kekproviders/pkcs11"
	"github.com/keybroker/keybroker/kekproviders/systemd"
	"github.com/keybroker/keybroker/kekproviders/vaulttransit"
)

// LegacyVariable and LegacyID are the original service's KEK variable and
// the id it recorded on every row.
const (
	LegacyVariable = "MANA_AUTH_KEK"
	LegacyID       = "env-v1"
)

// URI schemes of the providers.
const (
	SchemeEnv          = "env"
	SchemeFile         = "file"
	SchemeSystemd      = "systemd-credential"
	SchemeDockerSecret = "docker-secret"
	SchemeAWSKMS       = "awskms"
	SchemeGCPKMS       = "gcpkms"
	SchemeVaultTransit = "vault-transit"
	SchemePKCS11       = "pkcs11"
)

// PKCS11Supported reports whether this binary can open pkcs11: KEKs: it
// was built with cgo (`make build-pkcs11`, the keybroker:pkcs11 image).
// The static default build parses pkcs11: URIs and refuses to open them.
const PKCS11Supported = pkcs11.Supported

// Opener opens KEKs from URIs. The zero value is ready to use.
type Opener struct {
	// AllowDevKeys accepts the all-zero KEK. Only dev mode sets it.
	AllowDevKeys bool
	// Getenv reads the environment for env:// URIs and for
	// $CREDENTIALS_DIRECTORY; defaults to os.Getenv.
	Getenv func(string) string
	// DockerSecretsDir is where docker-secret:// looks for secrets;
	// empty means /run/secrets. Tests point it at a temporary directory.
	DockerSecretsDir string
	// GCPClientOptions are added to the Cloud KMS client's options (a
	// custom transport; tests pass no authentication and plaintext gRPC).
	GCPClientOptions []option.ClientOption
}

// Open opens the KEK named by uri with default options.
func Open(ctx context.Context, uri string) (kek.KEK, error) {
	return Opener{}.Open(ctx, uri)
}

var idPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$`)

// ParsedURI is a KEK URI split into its scheme, its provider-specific
// part, its id and the broker's own options.
type ParsedURI struct {
	Scheme string
	URL    *url.URL // the URI without its id and cache parameters
	ID     string
	// Cached is the cached envelope mode of a remote KEK: on unless the
	// URI says cache=off. Local KEKs are never cached (they need no cache).
	Cached bool
}

// Remote reports whether the scheme names a network KMS, which cached
// envelope mode keeps off the hot path.
func Remote(scheme string) bool {
	switch scheme {
	case SchemeAWSKMS, SchemeGCPKMS, SchemeVaultTransit:
		return true
	}
	return false
}

// ParseURI validates uri and extracts the KEK id.
func ParseURI(uri string) (*ParsedURI, error) {
	u, err := url.Parse(strings.TrimSpace(uri))
	if err != nil {
		// A *url.Error quotes the whole URI, token parameters and
		// passwords included: keep only its reason.
		var urlErr *url.Error
		if errors.As(err, &urlErr) {
			err = urlErr.Err
		}
		return nil, fmt.Errorf("kekproviders: %q is not a URI: %w", redact(uri), err)
	}
	if u.Scheme == "" {
		return nil, fmt.Errorf("kekproviders: %q has no scheme; use env://VAR or file:///path", redact(uri))
	}
	q := u.Query()
	id := q.Get("id")
	cache := q.Get("cache")
	hasCache := q.Has("cache")
	q.Del("id")
	q.Del("cache")
	u.RawQuery = q.Encode()
	p := &ParsedURI{Scheme: strings.ToLower(u.Scheme), URL: u, ID: id}
	if Remote(p.Scheme) {
		switch cache {
		case "", "on":
			p.Cached = true
		case "off":
		default:
			return nil, fmt.Errorf("kekproviders: %s: cache=%q: use cache=on (the default) or cache=off", redact(uri), cache)
		}
	} else if hasCache {
		return nil, fmt.Errorf("kekproviders: %s: cache= applies to remote KEKs only (awskms, gcpkms, vault-transit)", redact(uri))
	}
	if p.ID == "" && p.Scheme == SchemeEnv && envVariable(u) == LegacyVariable {
		p.ID = LegacyID
	}
	if p.ID == "" {
		// A misspelt id (?idd=x) is the likely reason there is none.
		var misspelt []string
		for name := range q {
			if uriparam.Suggest(name, []string{"id"}) != "" {
				misspelt = append(misspelt, name)
			}
		}
		if len(misspelt) > 0 {
			slices.Sort(misspelt)
			return nil, fmt.Errorf("kekproviders: %s in %s", uriparam.Unknown(misspelt, []string{"id"}), redact(uri))
		}
		return nil, fmt.Errorf("kekproviders: %s: add ?id=<stable id> to the URI (the id is recorded on every row the KEK wraps)", redact(uri))
	}
	if !idPattern.MatchString(p.ID) {
		return nil, fmt.Errorf("kekproviders: KEK id %q: use 1-64 letters, digits, '.', '_', ':' or '-'", p.ID)
	}
	return p, nil
}

// Open opens the KEK named by uri. Remote providers authenticate and may
// probe their backend here, bounded by ctx; a KEK that holds resources
// (connections, a token renewer) implements io.Closer.
func (o Opener) Open(ctx context.Context, uri string) (kek.KEK, error) {
	p, err := ParseURI(uri)
	if err != nil {
		return nil, err
	}
	getenv := o.Getenv
	if getenv == nil {
		getenv = os.Getenv
	}
	params := uriparam.New(p.Scheme, p.URL, uri)
	switch p.Scheme {
	case SchemeEnv:
		if err := params.Done(); err != nil {
			return nil, err
		}
		return env.Open(env.Config{ID: p.ID, Variable: envVariable(p.URL), Getenv: getenv, AllowDevKey: o.AllowDevKeys})
	case SchemeFile:
		if err := params.Done(); err != nil {
			return nil, err
		}
		if p.URL.Path == "" {
			return nil, errors.New("kekproviders: file URI needs an absolute path: file:///path/to/kek?id=ID")
		}
		return file.Open(p.ID, p.URL.Path, o.AllowDevKeys)
	case SchemeSystemd:
		if err := params.Done(); err != nil {
			return nil, err
		}
		return systemd.Open(systemd.Config{
			ID:          p.ID,
			Name:        hostAndPath(p.URL),
			Directory:   getenv(systemd.DirectoryVariable),
			AllowDevKey: o.AllowDevKeys,
		})
	case SchemeDockerSecret:
		if err := params.Done(); err != nil {
			return nil, err
		}
		return docker.Open(docker.Config{
			ID:          p.ID,
			Name:        hostAndPath(p.URL),
			Directory:   o.DockerSecretsDir,
			AllowDevKey: o.AllowDevKeys,
		})
	case SchemeAWSKMS:
		cfg := awskms.Config{
			ID:       p.ID,
			KeyID:    hostAndPath(p.URL),
			Region:   params.String("region"),
			Profile:  params.String("profile"),
			Endpoint: params.String("endpoint"),
			Timeout:  params.Duration("timeout"),
		}
		cfg.MaxAttempts, _ = params.Int("max_attempts")
		if n, ok := params.Int("max_inflight"); ok {
			if n == 0 {
				return nil, errors.New("kekproviders: awskms: URI parameter max_inflight=0: want at least 1 (leave it out for the default)")
			}
			cfg.MaxInFlight = n
		}
		if err := params.Done(); err != nil {
			return nil, err
		}
		return awskms.New(ctx, cfg)
	case SchemeGCPKMS:
		cfg := gcpkms.Config{
			ID:            p.ID,
			KeyName:       hostAndPath(p.URL),
			Endpoint:      params.String("endpoint"),
			Timeout:       params.Duration("timeout"),
			ClientOptions: o.GCPClientOptions,
		}
		if err := params.Done(); err != nil {
			return nil, err
		}
		return gcpkms.New(ctx, cfg)
	case SchemeVaultTransit:
		cfg := vaulttransit.Config{
			ID:        p.ID,
			Key:       hostAndPath(p.URL),
			Mount:     params.String("mount"),
			Address:   params.String("address"),
			Namespace: params.String("namespace"),
			Timeout:   params.Duration("timeout"),
			Auth: vaulttransit.Auth{
				Method:       params.String("auth"),
				TokenFile:    params.String("token_file"),
				Mount:        params.String("auth_mount"),
				RoleID:       params.String("role_id"),
				RoleIDFile:   params.String("role_id_file"),
				SecretIDFile: params.String("secret_id_file"),
				Role:         params.String("role"),
				JWTFile:      params.String("jwt_file"),
			},
		}
		if n, ok := params.Int("max_retries"); ok {
			cfg.MaxRetries = &n
		}
		if err := params.Done(); err != nil {
			return nil, err
		}
		return vaulttransit.New(ctx, cfg)
	case SchemePKCS11:
		return o.openPKCS11(ctx, p, params, getenv)
	default:
		return nil, fmt.Errorf("kekproviders: unknown scheme %q (known: %s)", p.Scheme, strings.Join(knownSchemes, ", "))
	}
}

var knownSchemes = []string{SchemeEnv, SchemeFile, SchemeSystemd, SchemeDockerSecret, SchemeAWSKMS, SchemeGCPKMS, SchemeVaultTransit, SchemePKCS11}

// openPKCS11 opens a pkcs11: URI (RFC 7512): the token and the key in the
// path attributes, the module, the PIN's source and keybroker's own
// parameters in the query. A PIN in the URI is refused, and never
// repeated in the error.
func (o Opener) openPKCS11(ctx context.Context, p *ParsedURI, params *uriparam.Params, getenv func(string) string) (kek.KEK, error) {
	if p.URL.Opaque == "" {
		return nil, errors.New("kekproviders: pkcs11: write the URI without //, as RFC 7512 does: pkcs11:token=LABEL;object=KEY?module-path=…&pin-source=file:…&id=ID")
	}
	q := p.URL.Query()
	if q.Has("pin-value") {
		return nil, errors.New("kekproviders: pkcs11: pin-value= puts the PIN in the URI, where logs, process listings and the environment show it: refused. Put the PIN in a file readable by keybroker only and use pin-source=file:/path/to/pin (or pin-source=systemd-credential:NAME)")
	}
	if q.Has("module-name") {
		return nil, errors.New("kekproviders: pkcs11: module-name= is not supported: name the module by its absolute path with module-path=")
	}
	sel, err := pkcs11.ParsePath(p.URL.Opaque)
	if err != nil {
		return nil, fmt.Errorf("kekproviders: %w", err)
	}
	cfg := pkcs11.Config{
		ID:                   p.ID,
		ModulePath:           params.String("module-path"),
		Selector:             sel,
		PINSource:            params.String("pin-source"),
		CredentialsDirectory: getenv(pkcs11.CredentialsDirectoryVariable),
		Timeout:              params.Duration("timeout"),
	}
	if n, ok := params.Int("max_sessions"); ok {
		if n == 0 {
			return nil, errors.New("kekproviders: pkcs11: URI parameter max_sessions=0: want at least 1 (leave it out for the default)")
		}
		cfg.MaxSessions = n
	}
	if err := params.Done(); err != nil {
		return nil, err
	}
	return pkcs11.Open(ctx, cfg)
}

// envVariable is the variable of env://VAR (or env:VAR).
func envVariable(u *url.URL) string {
	if u.Opaque != "" {
		return u.Opaque
	}
	return u.Host + strings.TrimPrefix(u.Path, "/")
}

// hostAndPath is what follows scheme:// up to the query, with the leading
// slash of an empty host dropped: "docker-secret://kek" and
// "docker-secret:///kek" both name "kek", "awskms:///alias/x" and
// "awskms://alias/x" both name "alias/x".
func hostAndPath(u *url.URL) string {
	if u.Opaque != "" {
		return u.Opaque
	}
	return strings.TrimPrefix(u.Host+u.Path, "/")
}

// RedactURI is uri as keybroker shows it — in messages and in "keybroker
// config show": the query kept, the values of parameters that may be
// secrets (any but the known public ones) and a password replaced by
// REDACTED.
func RedactURI(uri string) string { return uriparam.Redact(uri) }

// redact is uri for an error message: the query kept, so that a misspelt
// parameter shows, with every value that may be a secret (a careless
// operator may have put a token there) redacted (uriparam.Redact).
func redact(uri string) string { return uriparam.Redact(uri) }
