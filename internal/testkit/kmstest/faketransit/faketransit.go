// Package faketransit is an in-process HashiCorp Vault (or OpenBao) for
// tests: an HTTP server on 127.0.0.1 implementing the Transit endpoints
// and the auth endpoints the vaulttransit provider uses, with Vault's
// request and response JSON, {"errors":[…]} bodies and vault:vN:
// ciphertexts. No Vault or OpenBao server can be installed here and Vault
// as a Go library is not a sane dependency, so tests drive the real
// github.com/hashicorp/vault/api client at this.
//
// Behaviours mirrored on purpose:
//   - a derived key (derived=true) needs a context on every encrypt,
//     decrypt and rewrap, and a wrong context fails authentication; a
//     key without derivation ignores the context, as Vault does;
//   - associated_data binds a ciphertext (AES-GCM keys), and rewrap has
//     no associated_data parameter (Vault and OpenBao alike): it is
//     ignored with a warning, so an AAD-bound ciphertext cannot be
//     rewrapped;
//   - min_decryption_version refuses old ciphertexts; rotate adds a
//     version that new encryptions use;
//   - tokens expire after their TTL, renew-self extends renewable ones,
//     a revoked or unknown token gets 403 "permission denied";
//   - a sealed server answers 503 "Vault is sealed"; a namespace, when
//     set, must be sent in X-Vault-Namespace.
//
// Tests of other packages (the re-wrap job, benchmarks) reuse it.
package faketransit

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Mount is where the Transit engine is mounted.
const Mount = "transit"

type transitKey struct {
	derived       bool
	versions      [][]byte // versions[i] is version i+1
	created       []time.Time
	minDecryption int
}

type token struct {
	policies  []string
	ttl       time.Duration // 0: never expires (a root token)
	maxTTL    time.Duration // 0: no cap
	renewable bool
	issued    time.Time
	expires   time.Time
}

type login struct {
	secret    string // the secret id or the service account JWT
	ttl       time.Duration
	renewable bool
}

// Server is one fake Vault.
type Server struct {
	// URL is the server's address, http://127.0.0.1:PORT, as VAULT_ADDR
	// takes it.
	URL string

	srv       *http.Server
	closeOnce sync.Once
	served    chan struct{}
	closing   chan struct{} // closed by Close: releases stalled handlers
	events    chan string
	stalled   atomic.Bool

	mu        sync.Mutex
	keys      map[string]*transitKey
	tokens    map[string]*token
	approles  map[string]login // by role id
	k8sRoles  map[string]login // by role name
	namespace string
	sealed    bool
	requests  map[string]int // by "METHOD path"
}

// Start serves a fake Vault on a fresh 127.0.0.1 port until the test
// ends.
func Start(t testing.TB) *Server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	s := &Server{
		URL:      "http://" + ln.Addr().String(),
		served:   make(chan struct{}),
		closing:  make(chan struct{}),
		events:   make(chan string, 256),
		keys:     map[string]*transitKey{},
		tokens:   map[string]*token{},
		approles: map[string]login{},
		k8sRoles: map[string]login{},
		requests: map[string]int{},
	}
	s.srv = &http.Server{Handler: http.HandlerFunc(s.serveHTTP), ReadHeaderTimeout: 10 * time.Second}
	go func() {
		defer close(s.served)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("faketransit: serve: %v", err)
		}
	}()
	t.Cleanup(s.Close)
	return s
}

// Close stops the server at once, dropping connections: afterwards the
// address refuses connections. It is safe to call twice.
func (s *Server) Close() {
	s.closeOnce.Do(func() {
		close(s.closing)
		s.srv.Close()
		<-s.served
	})
}

// Events reports what happened on the server, one short string each:
// "login approle", "login kubernetes", "renew-self", "lookup-self",
// "rotate NAME". It is buffered and never blocks the server; a test waits
// on it instead of sleeping.
func (s *Server) Events() <-chan string { return s.events }

func (s *Server) event(e string) {
	select {
	case s.events <- e:
	default:
	}
}

// Requests returns how many requests came for "METHOD /v1/path".
func (s *Server) Requests(methodAndPath string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.requests[methodAndPath]
}

// CreateKey creates an aes256-gcm96 transit key with one version.
func (s *Server) CreateKey(t testing.TB, name string, derived bool) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	require.NotContains(t, s.keys, name)
	s.keys[name] = newKey(derived)
}

// RotateKey adds a version to the key; new encryptions use it.
func (s *Server) RotateKey(t testing.TB, name string) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	k := s.keys[name]
	require.NotNil(t, k, "no key %s", name)
	k.rotate()
}

// SetMinDecryptionVersion refuses ciphertexts older than version v.
func (s *Server) SetMinDecryptionVersion(t testing.TB, name string, v int) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	k := s.keys[name]
	require.NotNil(t, k, "no key %s", name)
	k.minDecryption = v
}

// TokenOptions shape a token made by Token.
type TokenOptions struct {
	TTL       time.Duration // 0: never expires
	MaxTTL    time.Duration // 0: no cap on renewals
	Renewable bool
}

// Token issues a token allowed everything.
func (s *Server) Token(opts TokenOptions) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.issue(opts.TTL, opts.MaxTTL, opts.Renewable)
}

// RevokeToken revokes a token: it gets 403 from now on.
func (s *Server) RevokeToken(tok string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.tokens, tok)
}

// AddAppRole lets roleID log in with secretID at auth/approle/login and
// get a token with the given TTL.
func (s *Server) AddAppRole(roleID, secretID string, ttl time.Duration, renewable bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.approles[roleID] = login{secret: secretID, ttl: ttl, renewable: renewable}
}

// AddKubernetesRole lets a pod presenting jwt log in as role at
// auth/kubernetes/login.
func (s *Server) AddKubernetesRole(role, jwt string, ttl time.Duration, renewable bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.k8sRoles[role] = login{secret: jwt, ttl: ttl, renewable: renewable}
}

// SetNamespace moves every mount into namespace ns (Vault Enterprise,
// OpenBao namespaces): requests must send X-Vault-Namespace: ns.
func (s *Server) SetNamespace(ns string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.namespace = strings.Trim(ns, "/")
}

// Stall makes the server hang: from now on it accepts requests and never
// answers them, until the client gives up or the server closes.
func (s *Server) Stall() { s.stalled.Store(true) }

// Seal seals or unseals the server; a sealed one answers 503.
func (s *Server) Seal(sealed bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sealed = sealed
}

type apiError struct {
	status int
	msgs   []string
}

func fail(status int, msgs ...string) *apiError { return &apiError{status: status, msgs: msgs} }

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	if s.stalled.Load() {
		// Until the client gives up or the server closes. Closing the
		// connection alone does not end r.Context() while the request body
		// is unread, so Close releases the handler itself.
		select {
		case <-r.Context().Done():
		case <-s.closing:
		}
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.requests[r.Method+" "+r.URL.Path]++
	resp, apiErr := s.route(r)
	w.Header().Set("Content-Type", "application/json")
	if apiErr != nil {
		w.WriteHeader(apiErr.status)
		msgs := apiErr.msgs
		if msgs == nil {
			msgs = []string{}
		}
		json.NewEncoder(w).Encode(map[string]any{"errors": msgs})
		return
	}
	if resp == nil {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	rid := make([]byte, 16)
	rand.Read(rid)
	resp["request_id"] = hex.EncodeToString(rid)
	for _, k := range []string{"lease_id", "wrap_info", "warnings", "auth", "data"} {
		if _, ok := resp[k]; !ok {
			resp[k] = nil
		}
	}
	if resp["lease_id"] == nil {
		resp["lease_id"] = ""
	}
	resp["renewable"] = false
	resp["lease_duration"] = 0
	json.NewEncoder(w).Encode(resp)
}

func (s *Server) route(r *http.Request) (map[string]any, *apiError) {
	if s.sealed {
		return nil, fail(http.StatusServiceUnavailable, "Vault is sealed")
	}
	path, ok := strings.CutPrefix(r.URL.Path, "/v1/")
	if !ok {
		return nil, fail(http.StatusNotFound)
	}
	if s.namespace != "" && strings.Trim(r.Header.Get("X-Vault-Namespace"), "/") != s.namespace {
		return nil, fail(http.StatusNotFound, fmt.Sprintf("no handler for route %q. route entry not found.", path))
	}
	body := map[string]any{}
	if r.Method == http.MethodPut || r.Method == http.MethodPost {
		if r.ContentLength != 0 {
			if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
				return nil, fail(http.StatusBadRequest, "failed to parse JSON input: "+err.Error())
			}
		}
	}
	write := r.Method == http.MethodPut || r.Method == http.MethodPost

	// Login paths are unauthenticated.
	switch {
	case write && path == "auth/approle/login":
		return s.loginAppRole(body)
	case write && path == "auth/kubernetes/login":
		return s.loginKubernetes(body)
	}

	tok, apiErr := s.authenticate(r)
	if apiErr != nil {
		return nil, apiErr
	}
	switch {
	case r.Method == http.MethodGet && path == "auth/token/lookup-self":
		s.event("lookup-self")
		return s.lookupSelf(r.Header.Get("X-Vault-Token"), tok), nil
	case write && path == "auth/token/renew-self":
		return s.renewSelf(r.Header.Get("X-Vault-Token"), tok, body)
	}

	rest, ok := strings.CutPrefix(path, Mount+"/")
	if !ok {
		return nil, fail(http.StatusNotFound, fmt.Sprintf("no handler for route %q. route entry not found.", path))
	}
	op, name, _ := strings.Cut(rest, "/")
	switch {
	case write && op == "encrypt":
		return s.encrypt(name, body)
	case write && op == "decrypt":
		return s.decrypt(name, body)
	case write && op == "rewrap":
		return s.rewrap(name, body)
	case op == "keys" && strings.HasSuffix(name, "/rotate") && write:
		return s.rotateHTTP(strings.TrimSuffix(name, "/rotate"))
	case op == "keys" && strings.HasSuffix(name, "/config") && write:
		return s.configHTTP(strings.TrimSuffix(name, "/config"), body)
	case op == "keys" && r.Method == http.MethodGet:
		return s.readKey(name)
	case op == "keys" && write:
		return s.createHTTP(name, body)
	}
	return nil, fail(http.StatusMethodNotAllowed, "unsupported operation")
}
