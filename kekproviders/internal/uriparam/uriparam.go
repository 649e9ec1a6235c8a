// Package uriparam reads the query parameters of a KEK URI strictly: each
// provider takes the parameters it knows, and Done reports the ones left
// over, so a misspelt parameter is an error at startup instead of a
// setting silently ignored.
package uriparam

import (
	"fmt"
	"maps"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Params is the query of one URI being consumed.
type Params struct {
	scheme string
	shown  string // the whole URI, redacted, for messages
	values url.Values
	taken  map[string]bool
	err    error
}

// New reads the query of u for the provider named scheme; uri is the
// whole URI as configured, which messages echo redacted.
func New(scheme string, u *url.URL, uri string) *Params {
	return &Params{scheme: scheme, shown: Redact(uri), values: u.Query(), taken: map[string]bool{}}
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
	return fmt.Errorf("%s: %s in %s (known: %s)", p.scheme, Unknown(unknown, known), p.shown, strings.Join(known, ", "))
}

// Unknown says that the parameters are unknown, each with the known one
// it most likely misspells: "unknown parameter idd (did you mean id?)".
func Unknown(unknown, known []string) string {
	parts := make([]string, len(unknown))
	for i, name := range unknown {
		parts[i] = name
		if guess := Suggest(name, known); guess != "" {
			parts[i] += " (did you mean " + guess + "?)"
		}
	}
	noun := "parameter"
	if len(unknown) > 1 {
		noun += "s"
	}
	return "unknown " + noun + " " + strings.Join(parts, ", ")
}

// public are the parameters whose values are names, paths, addresses or
// numbers, never secrets: messages show them. Every other value (an
// unknown parameter may be a token put in the wrong place) is redacted.
var public = map[string]bool{
	"id": true, "cache": true, "region": true, "profile": true, "endpoint": true, "timeout": true,
	"max_attempts": true, "max_inflight": true, "mount": true, "address": true, "namespace": true,
	"max_retries": true, "auth": true, "token_file": true, "auth_mount": true, "role_id_file": true,
	"secret_id_file": true, "role": true, "jwt_file": true, "module-path": true, "pin-source": true,
	"max_sessions": true,
}

// Redacted replaces what Redact hides.
const Redacted = "REDACTED"

// Redact returns uri for a message: its query kept, so a misspelt
// parameter shows, with the value of every parameter that may be a
// secret replaced by REDACTED — any parameter but the known public ones
// and their likely misspellings — and the password of its user
// information and its fragment dropped.
func Redact(uri string) string {
	u, err := url.Parse(strings.TrimSpace(uri))
	if err != nil {
		return "<a URI that does not parse>"
	}
	if _, hasPassword := u.User.Password(); hasPassword {
		u.User = url.UserPassword(u.User.Username(), Redacted)
	}
	u.Fragment, u.RawFragment = "", ""
	if u.RawQuery != "" {
		params := strings.Split(u.RawQuery, "&")
		known := slices.Sorted(maps.Keys(public))
		for i, param := range params {
			key, _, hasValue := strings.Cut(param, "=")
			name, err := url.QueryUnescape(key)
			switch {
			case err != nil || (!hasValue && !shown(name, known)):
				// A bare word may be a token pasted without its name.
				params[i] = Redacted
			case hasValue && !shown(name, known):
				params[i] = key + "=" + Redacted
			}
		}
		u.RawQuery = strings.Join(params, "&")
	}
	return u.String()
}

// Shown reports whether Redact shows the value of the parameter name:
// a public one, or a likely misspelling of one.
func Shown(name string) bool { return shown(name, slices.Sorted(maps.Keys(public))) }

func shown(name string, publicNames []string) bool {
	if public[name] {
		return true
	}
	guess := Suggest(name, publicNames)
	return guess != "" && public[guess]
}

// Suggest is the known name that name most likely misspells, or "": one
// edit away for a name of up to four letters, two for a longer one, case
// ignored.
func Suggest(name string, known []string) string {
	budget := 2
	if len(name) <= 4 {
		budget = 1
	}
	best, bestDistance := "", budget+1
	for _, k := range known {
		if d := editDistance(strings.ToLower(name), strings.ToLower(k)); d < bestDistance && k != name {
			best, bestDistance = k, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance of a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
