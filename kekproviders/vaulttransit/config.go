package vaulttransit

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"
)

// DefaultTimeout bounds one call, the client's retries included, when
// Config.Timeout is zero.
const DefaultTimeout = 10 * time.Second

// Authentication methods.
const (
	AuthToken      = "token"
	AuthAppRole    = "approle"
	AuthKubernetes = "kubernetes"
)

// DefaultKubernetesJWTFile is where Kubernetes mounts a pod's service
// account token.
const DefaultKubernetesJWTFile = "/var/run/secrets/kubernetes.io/serviceaccount/token"

// Auth says how to log in to Vault.
type Auth struct {
	// Method is AuthToken (default), AuthAppRole or AuthKubernetes.
	Method string
	// Token is the token for AuthToken. Empty means TokenFile, then
	// VAULT_TOKEN.
	Token string
	// TokenFile holds the token for AuthToken (a Vault Agent sink).
	TokenFile string
	// Mount is the auth method's mount path; empty means the method's
	// name ("approle", "kubernetes").
	Mount string
	// RoleID, or RoleIDFile, is the AppRole role id.
	RoleID     string
	RoleIDFile string
	// SecretIDFile holds the AppRole secret id; empty for a role bound
	// without one (bind_secret_id=false).
	SecretIDFile string
	// Role is the Kubernetes auth role.
	Role string
	// JWTFile holds the service account token for AuthKubernetes; empty
	// means DefaultKubernetesJWTFile. It is re-read at every login, as
	// projected tokens rotate.
	JWTFile string
}

// Config selects the transit key and how to reach it.
type Config struct {
	// ID is the KEK id recorded on every row it wraps.
	ID string
	// Key is the transit key's name. It must be a derived key.
	Key string
	// Mount is the Transit engine's mount path; empty means "transit".
	Mount string
	// Address overrides VAULT_ADDR.
	Address string
	// Namespace overrides VAULT_NAMESPACE.
	Namespace string
	// Timeout bounds each call, retries included; zero means
	// DefaultTimeout.
	Timeout time.Duration
	// MaxRetries overrides the client's retry count (VAULT_MAX_RETRIES,
	// default 2) when set.
	MaxRetries *int
	// Auth says how to log in.
	Auth Auth
	// Logger receives token renewal and re-login events; nil discards
	// them. Tokens and key material are never logged.
	Logger *slog.Logger
}

func (c *Config) validate() error {
	if c.ID == "" {
		return errors.New("vaulttransit: Config.ID is empty")
	}
	if c.Key == "" || strings.Contains(c.Key, "/") {
		return fmt.Errorf("vaulttransit: Config.Key %q: want a transit key name", c.Key)
	}
	if c.Mount == "" {
		c.Mount = "transit"
	}
	c.Mount = strings.Trim(c.Mount, "/")
	if c.Timeout < 0 {
		return fmt.Errorf("vaulttransit: Config.Timeout is negative (%s)", c.Timeout)
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.MaxRetries != nil && *c.MaxRetries < 0 {
		return fmt.Errorf("vaulttransit: Config.MaxRetries is negative (%d)", *c.MaxRetries)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	a := &c.Auth
	if a.Method == "" {
		a.Method = AuthToken
	}
	switch a.Method {
	case AuthToken:
		if a.Token != "" && a.TokenFile != "" {
			return errors.New("vaulttransit: set Config.Auth.Token or Config.Auth.TokenFile, not both")
		}
	case AuthAppRole:
		if (a.RoleID == "") == (a.RoleIDFile == "") {
			return errors.New("vaulttransit: AppRole needs exactly one of Config.Auth.RoleID and Config.Auth.RoleIDFile")
		}
	case AuthKubernetes:
		if a.Role == "" {
			return errors.New("vaulttransit: Kubernetes auth needs Config.Auth.Role")
		}
		if a.JWTFile == "" {
			a.JWTFile = DefaultKubernetesJWTFile
		}
	default:
		return fmt.Errorf("vaulttransit: Config.Auth.Method %q: want %s, %s or %s", a.Method, AuthToken, AuthAppRole, AuthKubernetes)
	}
	if a.Mount == "" && a.Method != AuthToken {
		a.Mount = a.Method
	}
	a.Mount = strings.Trim(a.Mount, "/")
	return nil
}
