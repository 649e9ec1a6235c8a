// Package client is a Go client of keybroker's encryption-vault API, for
// services and for the command line: one typed call per route, errors
// typed by the server's machine code, and the client side of
// zero-knowledge mode exactly as the browser does it (recovery codes,
// HKDF-SHA256, AES-256-GCM; see NewRecoveryCode and WrapWithRecovery).
//
// A typical zero-knowledge opt-in:
//
//	key, err := c.Init(ctx)                            // the master key
//	code, err := c.SetRecoveryCode(ctx, key.MasterKey) // show the code to the user, once
//	err = c.EnableZeroKnowledge(ctx)                   // the server drops its own wrap
//	key, err = c.Key(ctx)                              // now key.RequiresRecoveryCode
//	mk, err := key.Unlock(code)                        // the master key again, client-side
//	code, err = c.ReplaceRecoveryCode(ctx, code)       // a new code; proven with the key (KeyProof)
//
// Replacing the recovery wrap of a zero-knowledge vault needs proof that
// the caller holds the master key; SetRecoveryWrap, SetRecoveryCode and
// ReplaceRecoveryCode send it by themselves (KeyProof), never the key.
//
// The client never logs, and its errors never contain key material,
// recovery codes or tokens.
package client

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// BasePath is where keybroker serves the encryption-vault routes, below
// Config.BaseURL.
const BasePath = "/api/v1/me/encryption-vault"

// maxResponseBytes bounds what the client reads of any answer; keybroker's
// largest is a few hundred bytes.
const maxResponseBytes = 1 << 20

// Config configures a Client.
type Config struct {
	// BaseURL is keybroker's address, e.g. "http://127.0.0.1:3001" or
	// "https://keys.example.com/keybroker" behind a path-prefixing proxy;
	// required. BasePath is appended to it.
	BaseURL string
	// TokenSource returns the bearer token (the user's JWT) for each
	// request; it wins over Token. Use it for tokens that expire.
	TokenSource func(ctx context.Context) (string, error)
	// Token is a static bearer token, when TokenSource is nil.
	Token string
	// HTTPClient sends the requests; default a client with a 30s timeout.
	HTTPClient *http.Client
	// UserAgent is sent with every request (the server records it in the
	// audit trail); default "keybroker-go-client".
	UserAgent string
}

func (c *Config) validate() (*url.URL, error) {
	if c.BaseURL == "" {
		return nil, errors.New("client: Config.BaseURL is required")
	}
	u, err := url.Parse(c.BaseURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, errors.New("client: Config.BaseURL must be an http or https URL with a host")
	}
	if u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return nil, errors.New("client: Config.BaseURL must not carry credentials, a query or a fragment")
	}
	if c.TokenSource == nil && c.Token == "" {
		return nil, errors.New("client: Config.TokenSource or Config.Token is required")
	}
	if c.HTTPClient == nil {
		c.HTTPClient = &http.Client{Timeout: 30 * time.Second}
	}
	if c.UserAgent == "" {
		c.UserAgent = "keybroker-go-client"
	}
	return u, nil
}

// Client calls one keybroker as one user (the token's subject). It is
// safe for concurrent use.
type Client struct {
	base      string // BaseURL + BasePath, no trailing slash
	root      string // BaseURL, no trailing slash
	http      *http.Client
	token     func(ctx context.Context) (string, error)
	userAgent string
}

// New returns a Client. It does not contact the server.
func New(cfg Config) (*Client, error) {
	u, err := cfg.validate()
	if err != nil {
		return nil, err
	}
	token := cfg.TokenSource
	if token == nil {
		static := cfg.Token
		token = func(context.Context) (string, error) { return static, nil }
	}
	return &Client{
		base:      strings.TrimSuffix(u.String(), "/") + BasePath,
		root:      strings.TrimSuffix(u.String(), "/"),
		http:      cfg.HTTPClient,
		token:     token,
		userAgent: cfg.UserAgent,
	}, nil
}

// Status is the vault's metadata, as GET /status reports it.
type Status struct {
	VaultExists     bool
	HasRecoveryWrap bool
	ZeroKnowledge   bool
	RecoverySetAt   *time.Time // nil when no recovery wrap was ever set
}

// Key is what Init, Key and Rotate return: the master key in standard
// mode, or in zero-knowledge mode the recovery wrap to open with the
// user's recovery code (see Unlock).
type Key struct {
	// MasterKey is the 32-byte master key; nil when RequiresRecoveryCode.
	MasterKey     []byte
	FormatVersion int
	// KEKID names the key-encryption key that wraps the master key on the
	// server; empty in zero-knowledge mode.
	KEKID string

	// RequiresRecoveryCode is set in zero-knowledge mode; the master key
	// is then RecoveryWrappedMK sealed under the recovery code.
	RequiresRecoveryCode bool
	RecoveryWrappedMK    []byte
	RecoveryIV           []byte
}

// Unlock returns the master key: MasterKey in standard mode, or in
// zero-knowledge mode the recovery wrap opened with code. It returns
// ErrWrongRecoveryCode when the code does not open the wrap.
func (k *Key) Unlock(code string) ([]byte, error) {
	if !k.RequiresRecoveryCode {
		return bytes.Clone(k.MasterKey), nil
	}
	secret, err := ParseRecoveryCode(code)
	if err != nil {
		return nil, err
	}
	defer clear(secret)
	return UnwrapWithRecovery(k.RecoveryWrappedMK, k.RecoveryIV, secret)
}

// Status reports whether the user has a vault, a recovery wrap and
// zero-knowledge mode. It unwraps nothing and writes no audit row.
func (c *Client) Status(ctx context.Context) (*Status, error) {
	var body struct {
		VaultExists     bool    `json:"vaultExists"`
		HasRecoveryWrap bool    `json:"hasRecoveryWrap"`
		ZeroKnowledge   bool    `json:"zeroKnowledge"`
		RecoverySetAt   *string `json:"recoverySetAt"`
	}
	if err := c.do(ctx, http.MethodGet, "/status", nil, &body); err != nil {
		return nil, err
	}
	st := &Status{VaultExists: body.VaultExists, HasRecoveryWrap: body.HasRecoveryWrap, ZeroKnowledge: body.ZeroKnowledge}
	if body.RecoverySetAt != nil {
		t, err := time.Parse(time.RFC3339Nano, *body.RecoverySetAt)
		if err != nil {
			return nil, errors.New("client: status: recoverySetAt is not an ISO 8601 time")
		}
		st.RecoverySetAt = &t
	}
	return st, nil
}

// Init returns the user's master key, creating the vault on the first
// call; later calls return the same key (or, in zero-knowledge mode, the
// recovery wrap).
func (c *Client) Init(ctx context.Context) (*Key, error) {
	return c.key(ctx, http.MethodPost, "/init")
}

// Key returns the user's master key, or the recovery wrap in
// zero-knowledge mode. Before Init it returns ErrVaultNotInitialised.
func (c *Client) Key(ctx context.Context) (*Key, error) {
	return c.key(ctx, http.MethodGet, "/key")
}

// Rotate replaces the master key with a fresh one and returns it. The old
// key is gone: re-encrypt the user's data first. It clears the recovery
// wrap (it wrapped the old key), and returns ErrZKRotateForbidden in
// zero-knowledge mode.
func (c *Client) Rotate(ctx context.Context) (*Key, error) {
	return c.key(ctx, http.MethodPost, "/rotate")
}

// SetRecoveryWrap stores (or replaces) the recovery wrap made by
// WrapWithRecovery from mk, the master key. It sends mk's key possession
// proof (KeyProof) with the wrap — never mk itself — which keybroker
// requires to replace the recovery wrap in zero-knowledge mode. The
// server refuses other lengths than 48 and 12 bytes with ErrBadRequest,
// a key that is not the vault's with ErrKeyProofMismatch, and returns
// ErrVaultNotInitialised before Init.
func (c *Client) SetRecoveryWrap(ctx context.Context, mk, wrappedMK, iv []byte) error {
	if len(mk) != MasterKeySize {
		return fmt.Errorf("client: a master key is %d bytes, got %d", MasterKeySize, len(mk))
	}
	proof := KeyProof(mk)
	defer clear(proof)
	body := map[string]string{
		"recoveryWrappedMk": base64.StdEncoding.EncodeToString(wrappedMK),
		"recoveryIv":        base64.StdEncoding.EncodeToString(iv),
		"keyProof":          base64.StdEncoding.EncodeToString(proof),
	}
	return c.do(ctx, http.MethodPost, "/recovery-wrap", body, nil)
}

// SetRecoveryCode makes a new recovery code, wraps mk with it and stores
// the wrap, replacing any earlier one. It returns the code for the user
// to write down; the server never sees it.
func (c *Client) SetRecoveryCode(ctx context.Context, mk []byte) (code string, err error) {
	secret, code := NewRecoveryCode()
	defer clear(secret)
	wrappedMK, iv, err := WrapWithRecovery(mk, secret)
	if err != nil {
		return "", err
	}
	if err := c.SetRecoveryWrap(ctx, mk, wrappedMK, iv); err != nil {
		return "", err
	}
	return code, nil
}

// ReplaceRecoveryCode gives a zero-knowledge vault a new recovery code:
// it fetches the recovery wrap, opens it with the current code, and
// stores a wrap under a new code with the key's proof (SetRecoveryCode).
// It returns the new code, ErrWrongRecoveryCode when current does not
// open the wrap, and ErrNotZeroKnowledge in standard mode, where
// SetRecoveryCode with the key from Key does the same.
func (c *Client) ReplaceRecoveryCode(ctx context.Context, current string) (code string, err error) {
	key, err := c.Key(ctx)
	if err != nil {
		return "", err
	}
	if !key.RequiresRecoveryCode {
		clear(key.MasterKey)
		return "", ErrNotZeroKnowledge
	}
	mk, err := key.Unlock(current)
	if err != nil {
		return "", err
	}
	defer clear(mk)
	return c.SetRecoveryCode(ctx, mk)
}

// ClearRecoveryWrap removes the recovery wrap. It returns ErrZKActive in
// zero-knowledge mode and ErrVaultNotInitialised before Init.
func (c *Client) ClearRecoveryWrap(ctx context.Context) error {
	return c.do(ctx, http.MethodDelete, "/recovery-wrap", nil, nil)
}

// EnableZeroKnowledge makes the server drop its own wrap of the master
// key, leaving only the recovery wrap. Idempotent. It returns
// ErrRecoveryWrapMissing without a recovery wrap.
func (c *Client) EnableZeroKnowledge(ctx context.Context) error {
	return c.do(ctx, http.MethodPost, "/zero-knowledge", map[string]any{"enable": true}, nil)
}

// DisableZeroKnowledge hands the master key (opened with the recovery
// code) back to the server, which wraps it with its key-encryption key
// again. It returns ErrMasterKeyMismatch when masterKey is not the
// vault's key, and ErrBadRequest when it is not 32 bytes.
func (c *Client) DisableZeroKnowledge(ctx context.Context, masterKey []byte) error {
	body := map[string]any{"enable": false, "masterKey": base64.StdEncoding.EncodeToString(masterKey)}
	return c.do(ctx, http.MethodPost, "/zero-knowledge", body, nil)
}

func (c *Client) key(ctx context.Context, method, path string) (*Key, error) {
	var body struct {
		MasterKey            *string `json:"masterKey"`
		FormatVersion        int     `json:"formatVersion"`
		KEKID                string  `json:"kekId"`
		RequiresRecoveryCode bool    `json:"requiresRecoveryCode"`
		RecoveryWrappedMK    string  `json:"recoveryWrappedMk"`
		RecoveryIV           string  `json:"recoveryIv"`
	}
	if err := c.do(ctx, method, path, nil, &body); err != nil {
		return nil, err
	}
	k := &Key{FormatVersion: body.FormatVersion, KEKID: body.KEKID, RequiresRecoveryCode: body.RequiresRecoveryCode}
	var err error
	if body.RequiresRecoveryCode {
		if k.RecoveryWrappedMK, err = base64.StdEncoding.DecodeString(body.RecoveryWrappedMK); err != nil {
			return nil, fmt.Errorf("client: %s: recoveryWrappedMk is not base64", path)
		}
		if k.RecoveryIV, err = base64.StdEncoding.DecodeString(body.RecoveryIV); err != nil {
			return nil, fmt.Errorf("client: %s: recoveryIv is not base64", path)
		}
		return k, nil
	}
	if body.MasterKey == nil {
		return nil, fmt.Errorf("client: %s: the answer has neither masterKey nor requiresRecoveryCode", path)
	}
	if k.MasterKey, err = base64.StdEncoding.DecodeString(*body.MasterKey); err != nil {
		return nil, fmt.Errorf("client: %s: masterKey is not base64", path)
	}
	if len(k.MasterKey) != MasterKeySize {
		n := len(k.MasterKey)
		clear(k.MasterKey)
		return nil, fmt.Errorf("client: %s: masterKey is %d bytes, want %d", path, n, MasterKeySize)
	}
	return k, nil
}

// do sends one request to a vault route (path below BasePath) and
// decodes a 200 answer into out (unless nil); any other status is an
// *APIError.
func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	return c.send(ctx, method, c.base+path, path, in, out)
}

// send is do for the URL url; path names the route in errors.
func (c *Client) send(ctx context.Context, method, url, path string, in, out any) error {
	var payload []byte
	if in != nil {
		var err error
		if payload, err = json.Marshal(in); err != nil {
			return fmt.Errorf("client: %s %s: %w", method, path, err)
		}
		// The payload may carry a master key; it is wiped once sent.
		defer clear(payload)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, bytes.NewReader(payload))
	if err != nil {
		return fmt.Errorf("client: %s %s: %w", method, path, err)
	}
	token, err := c.token(ctx)
	if err != nil {
		return fmt.Errorf("client: token source: %w", err)
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", c.userAgent)
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	res, err := c.http.Do(req)
	if err != nil {
		// *url.Error names the URL, never the Authorization header.
		return fmt.Errorf("client: %s %s: %w", method, path, err)
	}
	defer res.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(res.Body, maxResponseBytes))
	if err != nil {
		return fmt.Errorf("client: %s %s: read answer: %w", method, path, err)
	}
	defer clear(raw) // it may hold a master key
	if res.StatusCode != http.StatusOK {
		return apiError(res, raw)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(raw, out); err != nil {
		// Not %w: a JSON syntax error may quote the answer, a key with it.
		return fmt.Errorf("client: %s %s: the answer is not the expected JSON", method, path)
	}
	return nil
}

func apiError(res *http.Response, raw []byte) error {
	e := &APIError{Status: res.StatusCode}
	var body struct {
		Error string `json:"error"`
		Code  string `json:"code"`
	}
	if json.Unmarshal(raw, &body) == nil && body.Code != "" {
		e.Code, e.Message = body.Code, body.Error
	} else {
		e.Message = http.StatusText(res.StatusCode)
	}
	if s := res.Header.Get("Retry-After"); s != "" {
		if secs, err := strconv.Atoi(s); err == nil && secs >= 0 {
			e.RetryAfter = time.Duration(secs) * time.Second
		}
	}
	return e
}
