package vaulttransit

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	hcvault "github.com/hashicorp/vault/api"

	"github.com/keybroker/keybroker/kekproviders/internal/secretfile"
)

// login authenticates with the configured method, sets the client's
// token and returns the token as a secret with its lease, for renewal.
func (k *KEK) login(ctx context.Context) (*hcvault.Secret, error) {
	switch k.auth.Method {
	case AuthAppRole, AuthKubernetes:
		return k.loginWith(ctx, methodLogin{auth: k.auth})
	default:
		return k.loginToken(ctx)
	}
}

// loginToken sets the configured token and looks it up to learn whether,
// and for how long, it can be renewed.
func (k *KEK) loginToken(ctx context.Context) (*hcvault.Secret, error) {
	token := k.auth.Token
	if k.auth.TokenFile != "" {
		var err error
		if token, err = readSecretFile("token", k.auth.TokenFile); err != nil {
			return nil, err
		}
	}
	if token == "" {
		token = k.envTok
	}
	if token == "" {
		return nil, &localError{errors.New("no Vault token: set VAULT_TOKEN, or token_file / auth=approle / auth=kubernetes in the URI")}
	}
	k.client.SetToken(token)
	self, err := k.client.Auth().Token().LookupSelfWithContext(ctx)
	if err != nil {
		return nil, err
	}
	ttl, err := self.TokenTTL()
	if err != nil {
		return nil, fmt.Errorf("token lookup: ttl: %w", err)
	}
	renewable, err := self.TokenIsRenewable()
	if err != nil {
		return nil, fmt.Errorf("token lookup: renewable: %w", err)
	}
	return &hcvault.Secret{Auth: &hcvault.SecretAuth{
		ClientToken:   token,
		Renewable:     renewable,
		LeaseDuration: int(ttl / time.Second),
	}}, nil
}

// loginWith runs an auth method's login on a copy of the client without a
// token (a stale one must not ride along) and installs the new token.
func (k *KEK) loginWith(ctx context.Context, m hcvault.AuthMethod) (*hcvault.Secret, error) {
	loginClient, err := k.client.CloneWithHeaders()
	if err != nil {
		return nil, &localError{fmt.Errorf("clone client: %w", err)}
	}
	loginClient.ClearToken()
	secret, err := loginClient.Auth().Login(ctx, m)
	if err != nil {
		return nil, err
	}
	k.client.SetToken(secret.Auth.ClientToken)
	return secret, nil
}

// methodLogin is the AppRole or Kubernetes login, as an
// hcvault.AuthMethod: one write to auth/MOUNT/login.
type methodLogin struct{ auth Auth }

// Login implements hcvault.AuthMethod.
func (m methodLogin) Login(ctx context.Context, client *hcvault.Client) (*hcvault.Secret, error) {
	data := map[string]any{}
	switch m.auth.Method {
	case AuthAppRole:
		roleID := m.auth.RoleID
		if m.auth.RoleIDFile != "" {
			var err error
			if roleID, err = readSecretFile("AppRole role id", m.auth.RoleIDFile); err != nil {
				return nil, err
			}
		}
		data["role_id"] = roleID
		if m.auth.SecretIDFile != "" {
			secretID, err := readSecretFile("AppRole secret id", m.auth.SecretIDFile)
			if err != nil {
				return nil, err
			}
			data["secret_id"] = secretID
		}
	case AuthKubernetes:
		jwt, err := readSecretFile("Kubernetes service account token", m.auth.JWTFile)
		if err != nil {
			return nil, err
		}
		data["role"] = m.auth.Role
		data["jwt"] = jwt
	}
	return client.Logical().WriteWithContext(ctx, "auth/"+m.auth.Mount+"/login", data)
}

// keepAlive renews the token while it can and logs in again when it
// cannot, until ctx ends (Close).
func (k *KEK) keepAlive(ctx context.Context, secret *hcvault.Secret) {
	defer close(k.done)
	for {
		if secret.Auth == nil || secret.Auth.LeaseDuration <= 0 {
			// A token that never expires (a root or periodic-less
			// non-expiring token): nothing to renew.
			k.log.Debug("vault token does not expire; no renewal")
			return
		}
		if !k.watch(ctx, secret) {
			return
		}
		next, ok := k.relogin(ctx)
		if !ok {
			return
		}
		secret = next
	}
}

// watch runs a LifetimeWatcher on secret until it stops renewing
// (reporting true: time to log in again) or ctx ends (false).
func (k *KEK) watch(ctx context.Context, secret *hcvault.Secret) bool {
	watcher, err := k.client.NewLifetimeWatcher(&hcvault.LifetimeWatcherInput{Secret: secret})
	if err != nil {
		k.log.Warn("vault token renewal cannot start", "error", err)
		return ctx.Err() == nil
	}
	go watcher.Start()
	defer watcher.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case err := <-watcher.DoneCh():
			if err != nil {
				k.log.Warn("vault token renewal stopped", "error", err)
			} else {
				k.log.Info("vault token reached the end of its renewable life; logging in again")
			}
			return true
		case renewal := <-watcher.RenewCh():
			ttl := 0
			if renewal.Secret != nil && renewal.Secret.Auth != nil {
				ttl = renewal.Secret.Auth.LeaseDuration
			}
			k.log.Debug("vault token renewed", "ttl_seconds", ttl)
		}
	}
}

// relogin logs in until it succeeds, backing off from one second to one
// minute between attempts, or until ctx ends.
func (k *KEK) relogin(ctx context.Context) (*hcvault.Secret, bool) {
	backoff := time.Second
	for {
		loginCtx, cancel := context.WithTimeout(ctx, k.timeout)
		secret, err := k.login(loginCtx)
		cancel()
		if err == nil {
			k.log.Info("vault login renewed", "method", k.auth.Method)
			return secret, true
		}
		k.log.Warn("vault login failed; retrying", "method", k.auth.Method, "error", err, "retry_in", backoff)
		timer := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil, false
		case <-timer.C:
		}
		backoff = min(2*backoff, time.Minute)
	}
}

// maxSecretFile bounds what is read from a token, secret id or JWT file.
const maxSecretFile = 64 << 10

// readSecretFile reads a token, role id, secret id or JWT file, trimmed.
// Its mode is not judged: a Kubernetes service account token, for one, is
// mounted readable by all (0644) by default.
func readSecretFile(what, path string) (string, error) {
	buf, err := secretfile.ReadManaged(path, maxSecretFile, what)
	if err != nil {
		return "", &localError{fmt.Errorf("%s file: %w", what, err)}
	}
	value := strings.TrimSpace(string(buf))
	clear(buf)
	if value == "" {
		return "", &localError{fmt.Errorf("%s file %s is empty", what, path)}
	}
	return value, nil
}
