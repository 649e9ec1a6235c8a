package vaultapi

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"
)

// corsPolicy lets the listed browser origins call the vault routes. It
// answers preflights itself (they carry no token, so they must not reach
// authentication) and sends CORS headers only to a listed origin, so
// every other origin is refused by the browser. The policy is an exact
// allow-list: a key broker has no use for "*".
type corsPolicy struct {
	origins map[string]bool
}

// Methods and request headers the vault routes use. The bearer token
// travels in Authorization, which is not a CORS-safelisted header, so it
// must be allowed explicitly.
const (
	corsAllowMethods  = "GET, POST, DELETE"
	corsAllowHeaders  = "Authorization, Content-Type"
	corsExposeHeaders = "Retry-After, X-Request-Id"
	corsMaxAge        = "600"
)

// newCORSPolicy validates the origins: each is scheme://host[:port], as a
// browser sends it in the Origin header, with no path, query or user.
// An empty list returns nil: no CORS.
func newCORSPolicy(origins []string) (*corsPolicy, error) {
	if len(origins) == 0 {
		return nil, nil
	}
	p := &corsPolicy{origins: map[string]bool{}}
	for _, o := range origins {
		if o == "*" {
			return nil, fmt.Errorf("vaultapi: CORS origin %q: list the browser origins explicitly (e.g. https://app.example.com); a wildcard would let any site ask for keys with a user's token", o)
		}
		u, err := url.Parse(o)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" ||
			(u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
			return nil, fmt.Errorf("vaultapi: CORS origin %q: want scheme://host[:port], e.g. https://app.example.com", o)
		}
		// Browsers send the origin in lower case without a trailing slash.
		p.origins[strings.ToLower(u.Scheme+"://"+u.Host)] = true
	}
	return p, nil
}

func (p *corsPolicy) handle(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		origin := r.Header.Get("Origin")
		h := w.Header()
		// Whatever the answer, it depends on Origin: no shared cache may
		// give one origin's answer to another.
		h.Add("Vary", "Origin")
		allowed := origin != "" && p.origins[origin]
		if r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != "" {
			h.Add("Vary", "Access-Control-Request-Method")
			h.Add("Vary", "Access-Control-Request-Headers")
			if allowed && preflightAllowed(r) {
				h.Set("Access-Control-Allow-Origin", origin)
				h.Set("Access-Control-Allow-Credentials", "true")
				h.Set("Access-Control-Allow-Methods", corsAllowMethods)
				h.Set("Access-Control-Allow-Headers", corsAllowHeaders)
				h.Set("Access-Control-Max-Age", corsMaxAge)
			}
			// Without the headers above the browser refuses the real
			// request; the status of a preflight tells it nothing more.
			w.WriteHeader(http.StatusNoContent)
			return
		}
		if allowed {
			h.Set("Access-Control-Allow-Origin", origin)
			h.Set("Access-Control-Allow-Credentials", "true")
			h.Set("Access-Control-Expose-Headers", corsExposeHeaders)
		}
		next.ServeHTTP(w, r)
	})
}

// preflightAllowed reports whether the preflight asks for a method and
// headers the vault routes accept.
func preflightAllowed(r *http.Request) bool {
	switch r.Header.Get("Access-Control-Request-Method") {
	case http.MethodGet, http.MethodPost, http.MethodDelete:
	default:
		return false
	}
	for _, line := range r.Header.Values("Access-Control-Request-Headers") {
		for _, name := range strings.Split(line, ",") {
			switch strings.ToLower(strings.TrimSpace(name)) {
			case "", "authorization", "content-type":
			default:
				return false
			}
		}
	}
	return true
}
