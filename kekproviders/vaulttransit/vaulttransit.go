// Package vaulttransit is a KEK held in the Transit secrets engine of
// HashiCorp Vault or OpenBao: the key never leaves the server; Wrap is
// transit/encrypt, Unwrap is transit/decrypt, and Rewrap is
// transit/rewrap, which moves a wrap to the key's newest version without
// the plaintext leaving Vault.
//
// # Binding
//
// The binding is sent as the key-derivation context of a derived key
// (created with derived=true), not as associated_data. Both authenticate
// it, but transit/rewrap takes no associated_data parameter — on every
// Vault and OpenBao release — so a wrap bound through associated data
// could never be rewrapped server-side, while one bound through a
// derivation context can, on every release. The context is the bytes
// "keybroker/vault-transit/v1" 0x00 followed by the canonical binding
// encoding (kekproviders/internal/binding); the fixed prefix keeps it
// non-empty for an empty binding, which a derived key requires. Vault
// silently ignores a context on a key without derivation, which would
// leave wraps unbound, so New and Status refuse such a key.
//
// # Key versions
//
// A ciphertext starts with vault:vN:, N being the key version that made
// it; KeyVersion reads it and LatestVersion reads the key's newest, so a
// rotation job can find the wraps to Rewrap.
//
// # Authentication
//
// Token (Auth.Token, Auth.TokenFile — re-read at each renewal failure, as
// Vault Agent rewrites it — or VAULT_TOKEN), AppRole or Kubernetes. The
// logins are one write each with the core client (the api/auth
// submodules add two modules for that). A renewable token is kept alive
// by the library's LifetimeWatcher; when it can no longer be renewed the
// provider logs in again, with backoff, until Close. Address, TLS
// (VAULT_CACERT, VAULT_CLIENT_CERT, …), namespace and retries come from
// the client's standard settings (DefaultConfig reads the VAULT_*
// environment); Config.Address and Config.Namespace override.
package vaulttransit

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	hcvault "github.com/hashicorp/vault/api"

	"github.com/keybroker/keybroker/kek"
	"github.com/keybroker/keybroker/kekproviders/internal/binding"
)

// contextPrefix starts every derivation context; see the package doc.
const contextPrefix = "keybroker/vault-transit/v1\x00"

// The abilities a Vault Transit KEK claims: the re-wrap job moves wraps
// of older key versions with Rewrap.
var (
	_ kek.KEK           = (*KEK)(nil)
	_ kek.StatusChecker = (*KEK)(nil)
	_ kek.Rewrapper     = (*KEK)(nil)
	_ kek.Versioner     = (*KEK)(nil)
	_ io.Closer         = (*KEK)(nil)
)

// KEK is a key-encryption key in Vault Transit. It is safe for concurrent
// use; Close stops its token renewal.
type KEK struct {
	id      string
	key     string
	mount   string
	timeout time.Duration
	auth    Auth
	envTok  string // VAULT_TOKEN as the client read it
	log     *slog.Logger
	client  *hcvault.Client

	stop      context.CancelFunc
	done      chan struct{}
	closeOnce sync.Once
}

// New configures the client, logs in, checks that the transit key exists
// and is derived, and starts keeping the token alive. Errors are
// classified as in package kek (see kek.Classify) (an unreachable Vault is unavailable, a
// refused login or a missing key denied).
func New(ctx context.Context, cfg Config) (*KEK, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	hcCfg := hcvault.DefaultConfig()
	if hcCfg.Error != nil {
		return nil, fmt.Errorf("vaulttransit: client settings: %w", hcCfg.Error)
	}
	if cfg.Address != "" {
		hcCfg.Address = cfg.Address
	}
	if cfg.MaxRetries != nil {
		hcCfg.MaxRetries = *cfg.MaxRetries
	}
	client, err := hcvault.NewClient(hcCfg)
	if err != nil {
		return nil, fmt.Errorf("vaulttransit: client: %w", err)
	}
	if cfg.Namespace != "" {
		client.SetNamespace(cfg.Namespace)
	}
	k := &KEK{
		id:      cfg.ID,
		key:     cfg.Key,
		mount:   cfg.Mount,
		timeout: cfg.Timeout,
		auth:    cfg.Auth,
		envTok:  client.Token(),
		log:     cfg.Logger.With("kek_id", cfg.ID, "provider", "vault-transit"),
		client:  client,
		done:    make(chan struct{}),
	}
	loginCtx, cancel := context.WithTimeout(ctx, k.timeout)
	secret, err := k.login(loginCtx)
	cancel()
	if err != nil {
		return nil, k.fail(ctx, "login", err)
	}
	if err := k.Status(ctx); err != nil {
		return nil, err
	}
	// The renewal goroutine outlives New's ctx (often a startup
	// timeout) but keeps its values; Close ends it.
	bg, stop := context.WithCancel(context.WithoutCancel(ctx))
	k.stop = stop
	go k.keepAlive(bg, secret)
	return k, nil
}

// Close stops token renewal and waits for it to end. It does not revoke
// the token: other replicas may share a Vault Agent token.
func (k *KEK) Close() error {
	k.closeOnce.Do(func() {
		k.stop()
		<-k.done
	})
	return nil
}

// ID returns the KEK id.
func (k *KEK) ID() string { return k.id }

// derivationContext is the context a wrap under binding b is made with.
func derivationContext(b map[string]string) string {
	return base64.StdEncoding.EncodeToString(append([]byte(contextPrefix), binding.AAD(b)...))
}

// Wrap encrypts plaintext with transit/encrypt under the derivation
// context of binding. The result is Vault's ciphertext text,
// vault:vN:…, as bytes. Errors are classified as in package kek (see kek.Classify).
func (k *KEK) Wrap(ctx context.Context, plaintext []byte, b map[string]string) ([]byte, error) {
	callCtx, cancel := context.WithTimeout(ctx, k.timeout)
	defer cancel()
	secret, err := k.client.Logical().WriteWithContext(callCtx, k.mount+"/encrypt/"+k.key, map[string]any{
		"plaintext": base64.StdEncoding.EncodeToString(plaintext),
		"context":   derivationContext(b),
	})
	if err != nil {
		return nil, k.fail(ctx, "encrypt", err)
	}
	ciphertext, err := stringField(secret, "ciphertext")
	if err != nil {
		return nil, fmt.Errorf("vaulttransit: encrypt: %w", err)
	}
	return []byte(ciphertext), nil
}

// Unwrap decrypts a vault:vN: ciphertext with transit/decrypt under the
// derivation context of binding. A ciphertext that does not open (Vault
// answers 400) is kek.ErrInvalidCiphertext.
func (k *KEK) Unwrap(ctx context.Context, ciphertext []byte, b map[string]string) ([]byte, error) {
	if _, err := KeyVersion(ciphertext); err != nil {
		return nil, fmt.Errorf("vaulttransit: decrypt: %w", err)
	}
	callCtx, cancel := context.WithTimeout(ctx, k.timeout)
	defer cancel()
	secret, err := k.client.Logical().WriteWithContext(callCtx, k.mount+"/decrypt/"+k.key, map[string]any{
		"ciphertext": string(ciphertext),
		"context":    derivationContext(b),
	})
	if err != nil {
		return nil, k.fail(ctx, "decrypt", err)
	}
	encoded, err := stringField(secret, "plaintext")
	if err != nil {
		return nil, fmt.Errorf("vaulttransit: decrypt: %w", err)
	}
	plaintext, err := base64.StdEncoding.DecodeString(encoded)
	if err != nil {
		return nil, fmt.Errorf("vaulttransit: decrypt: plaintext is not base64: %w", err)
	}
	return plaintext, nil
}

// Rewrap moves ciphertext to the key's newest version with
// transit/rewrap, under the same derivation context: the plaintext never
// leaves Vault and the binding stays the same (kek.Rewrapper).
func (k *KEK) Rewrap(ctx context.Context, ciphertext []byte, b map[string]string) ([]byte, error) {
	if _, err := KeyVersion(ciphertext); err != nil {
		return nil, fmt.Errorf("vaulttransit: rewrap: %w", err)
	}
	callCtx, cancel := context.WithTimeout(ctx, k.timeout)
	defer cancel()
	secret, err := k.client.Logical().WriteWithContext(callCtx, k.mount+"/rewrap/"+k.key, map[string]any{
		"ciphertext": string(ciphertext),
		"context":    derivationContext(b),
	})
	if err != nil {
		return nil, k.fail(ctx, "rewrap", err)
	}
	rewrapped, err := stringField(secret, "ciphertext")
	if err != nil {
		return nil, fmt.Errorf("vaulttransit: rewrap: %w", err)
	}
	return []byte(rewrapped), nil
}

// KeyVersion returns N of a vault:vN: ciphertext, or an error wrapping
// kek.ErrInvalidCiphertext when ciphertext has no such prefix.
func KeyVersion(ciphertext []byte) (int, error) {
	rest, ok := strings.CutPrefix(string(ciphertext), "vault:v")
	if !ok {
		return 0, fmt.Errorf("%w: no vault:v prefix", kek.ErrInvalidCiphertext)
	}
	digits, body, ok := strings.Cut(rest, ":")
	n, err := strconv.Atoi(digits)
	if !ok || err != nil || n < 1 || body == "" {
		return 0, fmt.Errorf("%w: malformed vault:vN: prefix", kek.ErrInvalidCiphertext)
	}
	return n, nil
}

// KeyVersion returns the key version that made ciphertext; see the
// package function.
func (k *KEK) KeyVersion(ciphertext []byte) (int, error) { return KeyVersion(ciphertext) }

// keyInfo is what Status and LatestVersion read from transit/keys/NAME.
type keyInfo struct {
	derived       bool
	latest        int
	minDecryption int
}

func (k *KEK) readKey(ctx context.Context) (keyInfo, error) {
	callCtx, cancel := context.WithTimeout(ctx, k.timeout)
	defer cancel()
	secret, err := k.client.Logical().ReadWithContext(callCtx, k.mount+"/keys/"+k.key)
	if err != nil {
		return keyInfo{}, k.fail(ctx, "read key", err)
	}
	if secret == nil || secret.Data == nil {
		return keyInfo{}, fmt.Errorf("vaulttransit: %w", kek.Denied(fmt.Errorf("no transit key %q at %s/keys", k.key, k.mount)))
	}
	info := keyInfo{}
	info.derived, _ = secret.Data["derived"].(bool)
	info.latest, _ = intField(secret.Data["latest_version"])
	info.minDecryption, _ = intField(secret.Data["min_decryption_version"])
	if enc, ok := secret.Data["supports_encryption"].(bool); ok && !enc {
		return info, fmt.Errorf("vaulttransit: %w", kek.Denied(fmt.Errorf("transit key %q does not support encryption", k.key)))
	}
	if !info.derived {
		return info, fmt.Errorf("vaulttransit: %w", kek.Denied(fmt.Errorf(
			"transit key %q is not derived: create it with derived=true (the binding travels as the derivation context, which Vault ignores on other keys)", k.key)))
	}
	return info, nil
}

// Status reads the transit key (read capability on MOUNT/keys/NAME) and
// reports an error unless it exists, is derived and supports encryption.
func (k *KEK) Status(ctx context.Context) error {
	_, err := k.readKey(ctx)
	return err
}

// LatestVersion returns the key's newest version, the one Wrap and
// Rewrap use; wraps with an older KeyVersion are due for Rewrap.
func (k *KEK) LatestVersion(ctx context.Context) (int, error) {
	info, err := k.readKey(ctx)
	if err != nil {
		return 0, err
	}
	return info.latest, nil
}

func stringField(secret *hcvault.Secret, field string) (string, error) {
	if secret == nil || secret.Data == nil {
		return "", kek.Unavailable(errors.New("Vault answered without data"))
	}
	s, ok := secret.Data[field].(string)
	if !ok || s == "" {
		return "", kek.Unavailable(fmt.Errorf("Vault answered without %s", field))
	}
	return s, nil
}

func intField(v any) (int, bool) {
	switch n := v.(type) {
	case json.Number:
		i, err := n.Int64()
		return int(i), err == nil
	case float64:
		return int(n), true
	case int:
		return n, true
	}
	return 0, false
}
