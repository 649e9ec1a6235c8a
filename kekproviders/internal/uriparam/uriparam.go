// Package uriparam reads the query parameters of a KEK URI strictly: each
// provider takes the parameters it knows, and Done reports the ones left
// over, so a misspelt parameter is an error at startup instead of a
// setting silently ignored.
package uriparam

import (
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Params is the query of one URI being consumed.
type Params struct {
	scheme string
	values url.Values
	taken  map[string]bool
	err    error
}

// New reads the query of u for the provider named scheme.
func New(scheme string, u *url.URL) *Params {
	return &Params{scheme: scheme, values: u.Query(), taken: map[string]bool{}}
}

// String returns the parameter's value, or "" when absent.
func (p *Params) String(name string) string {
	p.taken[name] = true
	vs := p.values[name]
	if len(vs) > 1 && p.err == nil {
		p.err = fmt.Errorf("%s: URI parameter %q is given %d times", p.scheme, name, len(vs))
	}
	if len(vs) == 0 {
		return ""
	}
	return vs[0]
}

// Duration returns the parameter as a Go duration ("5s", "250ms"), or 0
// when absent.
func (p *Params) Duration(name string) time.Duration {
	s := p.String(name)
	if s == "" {
		return 0
	}
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 {
		p.fail(name, s, "a positive duration such as 5s or 250ms")
		return 0
	}
	return d
}

// Int returns the parameter as a non-negative integer and whether it was
// present.
func (p *Params) Int(name string) (int, bool) {
	s := p.String(name)
	if s == "" {
		return 0, false
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		p.fail(name, s, "a non-negative integer")
		return 0, false
	}
	return n, true
}

func (p *Params) fail(name, value, want string) {
	if p.err == nil {
		p.err = fmt.Errorf("%s: URI parameter %s=%q: want %s", p.scheme, name, value, want)
	}
}

// Done returns the first parse error, or an error naming every parameter
// no one asked for.
func (p *Params) Done() error {
	if p.err != nil {
		return p.err
	}
	var unknown []string
	for name := range p.values {
		if !p.taken[name] {
			unknown = append(unknown, name)
		}
	}
	if len(unknown) == 0 {
		return nil
	}
	slices.Sort(unknown)
	var known []string
	for name := range p.taken {
		known = append(known, name)
	}
	slices.Sort(known)
	known = append([]string{"id"}, known...)
	return fmt.Errorf("%s: unknown URI parameter(s) %s (known: %s)", p.scheme, strings.Join(unknown, ", "), strings.Join(known, ", "))
}
