// Package kekproviders opens a KEK from a URI. Each provider lives in its
// own package; this one holds the single factory that picks one by
// scheme.
//
// URI forms:
//
//	env://VARIABLE[?id=ID]        base64 of 32 bytes in $VARIABLE
//	file:///path/to/kek?id=ID     32 raw bytes or base64 text in a file
//
// Every KEK has a stable id, recorded on each row it wraps. It comes from
// the URI's id parameter; env://MANA_AUTH_KEK defaults to "env-v1", the
// id the original service wrote.
package kekproviders

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"regexp"
	"strings"

	"github.com/keybroker/keybroker/kekproviders/env"
	"github.com/keybroker/keybroker/kekproviders/file"
)

// KEK is what every provider returns: the method set of broker.KEK.
type KEK interface {
	ID() string
	Wrap(ctx context.Context, plaintext []byte, binding map[string]string) ([]byte, error)
	Unwrap(ctx context.Context, ciphertext []byte, binding map[string]string) ([]byte, error)
}

// LegacyVariable and LegacyID are the original service's KEK variable and
// the id it recorded on every row.
const (
	LegacyVariable = "MANA_AUTH_KEK"
	LegacyID       = "env-v1"
)

// Opener opens KEKs from URIs.
type Opener struct {
	// AllowDevKeys accepts the all-zero KEK. Only dev mode sets it.
	AllowDevKeys bool
	// Getenv reads the environment for env:// URIs; defaults to os.Getenv.
	Getenv func(string) string
}

// Open opens the KEK named by uri with default options.
func Open(ctx context.Context, uri string) (KEK, error) {
	return Opener{}.Open(ctx, uri)
}

var idPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$`)

// ParsedURI is a KEK URI split into its scheme, its provider-specific
// part and its id.
type ParsedURI struct {
	Scheme string
	URL    *url.URL
	ID     string
}

// ParseURI validates uri and extracts the KEK id.
func ParseURI(uri string) (*ParsedURI, error) {
	u, err := url.Parse(strings.TrimSpace(uri))
	if err != nil {
		return nil, fmt.Errorf("kekproviders: %q is not a URI: %w", redact(uri), err)
	}
	if u.Scheme == "" {
		return nil, fmt.Errorf("kekproviders: %q has no scheme; use env://VAR or file:///path", redact(uri))
	}
	q := u.Query()
	id := q.Get("id")
	q.Del("id")
	u.RawQuery = q.Encode()
	p := &ParsedURI{Scheme: strings.ToLower(u.Scheme), URL: u, ID: id}
	if p.ID == "" && p.Scheme == "env" && envVariable(u) == LegacyVariable {
		p.ID = LegacyID
	}
	if p.ID == "" {
		return nil, fmt.Errorf("kekproviders: %s: add ?id=<stable id> to the URI (the id is recorded on every row the KEK wraps)", redact(uri))
	}
	if !idPattern.MatchString(p.ID) {
		return nil, fmt.Errorf("kekproviders: KEK id %q: use 1-64 letters, digits, '.', '_', ':' or '-'", p.ID)
	}
	return p, nil
}

// Open opens the KEK named by uri.
func (o Opener) Open(ctx context.Context, uri string) (KEK, error) {
	p, err := ParseURI(uri)
	if err != nil {
		return nil, err
	}
	getenv := o.Getenv
	if getenv == nil {
		getenv = os.Getenv
	}
	switch p.Scheme {
	case "env":
		return env.Open(env.Config{ID: p.ID, Variable: envVariable(p.URL), Getenv: getenv, AllowDevKey: o.AllowDevKeys})
	case "file":
		if p.URL.Path == "" {
			return nil, errors.New("kekproviders: file URI needs an absolute path: file:///path/to/kek?id=ID")
		}
		return file.Open(p.ID, p.URL.Path, o.AllowDevKeys)
	default:
		return nil, fmt.Errorf("kekproviders: unknown scheme %q (known: env, file)", p.Scheme)
	}
}

// envVariable is the variable of env://VAR (or env:VAR).
func envVariable(u *url.URL) string {
	if u.Opaque != "" {
		return u.Opaque
	}
	return u.Host + strings.TrimPrefix(u.Path, "/")
}

// redact drops user info and query values from a URI before it goes into
// an error message: a careless operator may have put a token there.
func redact(uri string) string {
	u, err := url.Parse(uri)
	if err != nil {
		return "<unparseable URI>"
	}
	u.User = nil
	u.RawQuery = ""
	return u.String()
}
