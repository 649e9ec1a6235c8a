// Package jwtissuer is a small Ed25519 JWT issuer: it mints EdDSA tokens
// shaped like Better Auth's and serves the matching public JWKS. Like
// Better Auth's JWT plugin, which puts its base URL in both iss and aud,
// it uses its issuer name for both claims unless told otherwise.
//
// It is production code: dev mode (`serve --dev`) uses it, with a key
// persisted by Save/Load, so a developer can run the broker without a
// Better Auth instance. Tests use it too, for real signed tokens and a
// real JWKS endpoint, which is why it lives in internal/ and not below
// internal/testkit. It is not meant to face the internet: there is no
// revocation, and rotation keeps every old key.
package jwtissuer

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/lestrrat-go/jwx/v3/jwa"
	"github.com/lestrrat-go/jwx/v3/jwk"
	"github.com/lestrrat-go/jwx/v3/jwt"
)

// DefaultTTL is the lifetime of a minted token when Claims.Expiry is zero.
const DefaultTTL = 15 * time.Minute

// Issuer signs tokens with its newest Ed25519 key and publishes all its
// keys' public halves. It is safe for concurrent use.
type Issuer struct {
	issuer string

	mu   sync.RWMutex
	keys []signingKey // oldest first; the last one signs
}

type signingKey struct {
	kid  string
	priv ed25519.PrivateKey
}

// New returns an Issuer with a fresh random key. issuer becomes the iss
// claim of every token it mints and must not be empty.
func New(issuer string) (*Issuer, error) {
	if issuer == "" {
		return nil, errors.New("jwtissuer: issuer is required")
	}
	iss := &Issuer{issuer: issuer}
	if _, err := iss.Rotate(); err != nil {
		return nil, err
	}
	return iss, nil
}

// NewFromSeed returns an Issuer whose single key is derived from a 32-byte
// Ed25519 seed under the given kid, for reproducible dev setups and tests.
func NewFromSeed(issuer, kid string, seed []byte) (*Issuer, error) {
	if issuer == "" {
		return nil, errors.New("jwtissuer: issuer is required")
	}
	if kid == "" {
		return nil, errors.New("jwtissuer: kid is required")
	}
	if len(seed) != ed25519.SeedSize {
		return nil, fmt.Errorf("jwtissuer: seed must be %d bytes, got %d", ed25519.SeedSize, len(seed))
	}
	return &Issuer{
		issuer: issuer,
		keys:   []signingKey{{kid: kid, priv: ed25519.NewKeyFromSeed(seed)}},
	}, nil
}

// Issuer returns the iss claim this Issuer puts in its tokens, and by
// default their aud.
func (iss *Issuer) Issuer() string { return iss.issuer }

// KeyID returns the kid of the key that currently signs.
func (iss *Issuer) KeyID() string {
	iss.mu.RLock()
	defer iss.mu.RUnlock()
	return iss.keys[len(iss.keys)-1].kid
}

// PublicKey returns the public half of the key that currently signs.
func (iss *Issuer) PublicKey() ed25519.PublicKey {
	iss.mu.RLock()
	defer iss.mu.RUnlock()
	return iss.keys[len(iss.keys)-1].priv.Public().(ed25519.PublicKey)
}

// Rotate adds a fresh key with a random kid and makes it the signing key.
// Older keys stay in the JWKS so tokens they signed keep verifying.
// It returns the new kid, or an error if the system's randomness fails.
func (iss *Issuer) Rotate() (string, error) {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return "", fmt.Errorf("jwtissuer: generate key: %w", err)
	}
	kid, err := randomKID()
	if err != nil {
		return "", err
	}
	iss.mu.Lock()
	iss.keys = append(iss.keys, signingKey{kid: kid, priv: priv})
	iss.mu.Unlock()
	return kid, nil
}

func randomKID() (string, error) {
	var b [16]byte
	if _, err := io.ReadFull(rand.Reader, b[:]); err != nil {
		return "", fmt.Errorf("jwtissuer: generate kid: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b[:]), nil
}

// Claims describes a token to mint. Zero fields take sensible defaults, so
// Claims{Subject: "user-1"} is a valid token; the odd fields exist so tests
// can mint the malformed tokens a verifier must refuse.
type Claims struct {
	// Subject is the sub claim (the user id); omitted when empty.
	Subject string
	// Audience is the aud claim; defaults to the Issuer's name (not to an
	// Issuer override below), as Better Auth's default aud is its iss.
	Audience []string
	// OmitAudience leaves aud out entirely.
	OmitAudience bool
	// Issuer overrides the Issuer's iss claim when set.
	Issuer string
	// IssuedAt defaults to now.
	IssuedAt time.Time
	// NotBefore is the nbf claim; omitted when zero.
	NotBefore time.Time
	// Expiry defaults to IssuedAt + DefaultTTL.
	Expiry time.Time
	// OmitExpiry leaves exp out entirely (a token verifiers must refuse).
	OmitExpiry bool
	// Extra holds further private claims.
	Extra map[string]any
}

// MintSubject mints a token for sub with the default claims.
func (iss *Issuer) MintSubject(sub string) (string, error) {
	return iss.Mint(Claims{Subject: sub})
}

// Mint signs c with the current key and returns the compact token; its
// header carries alg EdDSA, typ JWT and the key's kid. It returns an error
// only if a claim cannot be encoded.
func (iss *Issuer) Mint(c Claims) (string, error) {
	iss.mu.RLock()
	current := iss.keys[len(iss.keys)-1]
	iss.mu.RUnlock()

	issuedAt := c.IssuedAt
	if issuedAt.IsZero() {
		issuedAt = time.Now()
	}
	issuer := c.Issuer
	if issuer == "" {
		issuer = iss.issuer
	}
	b := jwt.NewBuilder().Issuer(issuer).IssuedAt(issuedAt)
	if c.Subject != "" {
		b = b.Subject(c.Subject)
	}
	switch {
	case c.OmitAudience:
	case len(c.Audience) > 0:
		b = b.Audience(c.Audience)
	default:
		b = b.Audience([]string{iss.issuer})
	}
	if !c.NotBefore.IsZero() {
		b = b.NotBefore(c.NotBefore)
	}
	if !c.OmitExpiry {
		expiry := c.Expiry
		if expiry.IsZero() {
			expiry = issuedAt.Add(DefaultTTL)
		}
		b = b.Expiration(expiry)
	}
	for name, value := range c.Extra {
		b = b.Claim(name, value)
	}
	tok, err := b.Build()
	if err != nil {
		return "", fmt.Errorf("jwtissuer: build claims: %w", err)
	}

	key, err := privateJWK(current)
	if err != nil {
		return "", err
	}
	signed, err := jwt.Sign(tok, jwt.WithKey(jwa.EdDSA(), key))
	if err != nil {
		return "", fmt.Errorf("jwtissuer: sign: %w", err)
	}
	return string(signed), nil
}

func privateJWK(k signingKey) (jwk.Key, error) {
	key, err := jwk.Import(k.priv)
	if err != nil {
		return nil, fmt.Errorf("jwtissuer: import key: %w", err)
	}
	for name, value := range map[string]any{
		jwk.KeyIDKey:     k.kid,
		jwk.AlgorithmKey: jwa.EdDSA(),
		jwk.KeyUsageKey:  jwk.ForSignature,
	} {
		if err := key.Set(name, value); err != nil {
			return nil, fmt.Errorf("jwtissuer: set %s: %w", name, err)
		}
	}
	return key, nil
}

// PublicJWKS returns the JSON JWK Set of every key's public half, as the
// JWKS endpoint serves it.
func (iss *Issuer) PublicJWKS() ([]byte, error) {
	set, err := iss.keySet(true)
	if err != nil {
		return nil, err
	}
	return json.Marshal(set)
}

func (iss *Issuer) keySet(public bool) (jwk.Set, error) {
	iss.mu.RLock()
	keys := append([]signingKey(nil), iss.keys...)
	iss.mu.RUnlock()

	set := jwk.NewSet()
	for _, k := range keys {
		key, err := privateJWK(k)
		if err != nil {
			return nil, err
		}
		if public {
			if key, err = key.PublicKey(); err != nil {
				return nil, fmt.Errorf("jwtissuer: public key: %w", err)
			}
		}
		if err := set.AddKey(key); err != nil {
			return nil, fmt.Errorf("jwtissuer: add key: %w", err)
		}
	}
	return set, nil
}

// JWKSHandler serves the public JWKS (GET or HEAD only). It reflects
// rotations immediately.
func (iss *Issuer) JWKSHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		body, err := iss.PublicJWKS()
		if err != nil {
			http.Error(w, "jwks unavailable", http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/jwk-set+json")
		w.Header().Set("Cache-Control", "no-store")
		_, _ = w.Write(body)
	})
}

// keyFile is the on-disk form: a private JWK Set plus the issuer name, so a
// dev key file is readable by any JOSE tool.
type keyFile struct {
	Issuer string          `json:"issuer"`
	Keys   json.RawMessage `json:"jwks"`
}

// Save writes the issuer name and all its private keys to path with mode
// 0600, atomically (temporary file, fsync, rename), so a crash never leaves
// a half-written key. It returns an error if the file cannot be written.
func (iss *Issuer) Save(path string) error {
	set, err := iss.keySet(false)
	if err != nil {
		return err
	}
	keys, err := json.Marshal(set)
	if err != nil {
		return fmt.Errorf("jwtissuer: encode keys: %w", err)
	}
	body, err := json.MarshalIndent(keyFile{Issuer: iss.issuer, Keys: keys}, "", "  ")
	if err != nil {
		return fmt.Errorf("jwtissuer: encode key file: %w", err)
	}

	tmp, err := os.CreateTemp(filepath.Dir(path), ".jwtissuer-*")
	if err != nil {
		return fmt.Errorf("jwtissuer: save: %w", err)
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("jwtissuer: save: %w", err)
	}
	if _, err := tmp.Write(append(body, '\n')); err != nil {
		tmp.Close()
		return fmt.Errorf("jwtissuer: save: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("jwtissuer: save: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("jwtissuer: save: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("jwtissuer: save: %w", err)
	}
	return nil
}

// Load reads an Issuer written by Save. It refuses a file that group or
// others can access, as ssh does for private keys, and a file with no
// usable Ed25519 key. The newest (last) key signs.
func Load(path string) (*Issuer, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("jwtissuer: load: %w", err)
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("jwtissuer: load: %w", err)
	}
	if info.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("jwtissuer: load %s: permissions %04o are too open, want 0600", path, info.Mode().Perm())
	}
	body, err := io.ReadAll(io.LimitReader(f, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("jwtissuer: load: %w", err)
	}

	var file keyFile
	if err := json.Unmarshal(body, &file); err != nil {
		return nil, fmt.Errorf("jwtissuer: load %s: %w", path, err)
	}
	if file.Issuer == "" {
		return nil, fmt.Errorf("jwtissuer: load %s: no issuer", path)
	}
	set, err := jwk.Parse(file.Keys)
	if err != nil {
		return nil, fmt.Errorf("jwtissuer: load %s: keys: %w", path, err)
	}
	iss := &Issuer{issuer: file.Issuer}
	for i := range set.Len() {
		key, _ := set.Key(i)
		kid, ok := key.KeyID()
		if !ok || kid == "" {
			return nil, fmt.Errorf("jwtissuer: load %s: key %d has no kid", path, i)
		}
		var priv ed25519.PrivateKey
		if err := jwk.Export(key, &priv); err != nil {
			return nil, fmt.Errorf("jwtissuer: load %s: key %d is not an Ed25519 private key", path, i)
		}
		iss.keys = append(iss.keys, signingKey{kid: kid, priv: priv})
	}
	if len(iss.keys) == 0 {
		return nil, fmt.Errorf("jwtissuer: load %s: no keys", path)
	}
	return iss, nil
}

// LoadOrCreate loads the Issuer saved at path, or creates one for issuer
// and saves it there when the file does not exist yet: what dev mode wants
// so tokens survive restarts. An existing file for a different issuer is
// an error rather than silently signing under the wrong name.
func LoadOrCreate(path, issuer string) (*Issuer, error) {
	iss, err := Load(path)
	if errors.Is(err, os.ErrNotExist) {
		if iss, err = New(issuer); err != nil {
			return nil, err
		}
		if err := iss.Save(path); err != nil {
			return nil, err
		}
		return iss, nil
	}
	if err != nil {
		return nil, err
	}
	if iss.issuer != issuer {
		return nil, fmt.Errorf("jwtissuer: %s holds keys for issuer %q, not %q", path, iss.issuer, issuer)
	}
	return iss, nil
}
