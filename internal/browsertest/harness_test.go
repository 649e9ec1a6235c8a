package browsertest_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/internal/testkit/apitest"
	"github.com/keybroker/keybroker/vaultapi"
)

// The harness: one Chromium for the whole package (started on first use,
// stopped by TestMain), one build of the SDK into a temporary directory,
// a static page server on its own origin, and keybroker servers that
// record what the browser sent them.

// stepTimeout bounds every wait on the browser: a page step, a
// navigation, the browser's start.
const stepTimeout = 90 * time.Second

// repoRoot is the repository's top directory (the tests run in
// internal/browsertest).
var repoRoot = func() string {
	dir, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		panic(err)
	}
	return dir
}()

func TestMain(m *testing.M) {
	code := m.Run()
	shared.stop()
	os.Exit(code)
}

// inCI reports whether the tests run in CI, where a missing browser or
// npm package is a failure, not a skip.
func inCI() bool {
	v := strings.ToLower(os.Getenv("CI"))
	return v != "" && v != "0" && v != "false"
}

// unavailable stops a test that cannot run here: loudly skipped on a
// developer's machine, failed in CI.
func unavailable(t testing.TB, reason string) {
	t.Helper()
	if inCI() {
		t.Fatalf("BROWSER TEST CANNOT RUN IN CI: %s (.ci/run installs it)", reason)
	}
	msg := fmt.Sprintf("\n\n*** BROWSER TEST SKIPPED: %s\n*** .ci/run installs what it needs; with CI=true this is a failure. ***\n\n", reason)
	fmt.Fprint(os.Stderr, msg)
	t.Skip(msg)
}

// sharedState is what the package's tests share; stop releases it.
type sharedState struct {
	sdkOnce    sync.Once
	sdkDir     string // the build: dist/, dist-test/ after TestSDKNodeTests
	sdkMissing string
	sdkErr     error

	browserOnce    sync.Once
	browserCtx     context.Context
	browserCancel  func()
	allocCancel    func()
	browserMissing string
	browserErr     error
	browserLog     *syncBuffer
	userDataDir    string
}

var shared sharedState

func (s *sharedState) stop() {
	if s.browserCancel != nil {
		s.browserCancel()
	}
	if s.allocCancel != nil {
		s.allocCancel()
	}
	if s.userDataDir != "" {
		_ = os.RemoveAll(s.userDataDir)
	}
	if s.sdkDir != "" {
		_ = os.RemoveAll(s.sdkDir)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// chromiumPath finds the browser: KEYBROKER_CHROMIUM, else Debian's
// chromium (or another Chromium build) on the PATH.
func chromiumPath() (path, missing string) {
	if p := os.Getenv("KEYBROKER_CHROMIUM"); p != "" {
		if _, err := exec.LookPath(p); err != nil {
			return "", fmt.Sprintf("KEYBROKER_CHROMIUM=%s is not an executable", p)
		}
		return p, ""
	}
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome-stable", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p, ""
		}
	}
	return "", "Chromium is not installed (Debian: apt-get install chromium), or set KEYBROKER_CHROMIUM"
}

// browser returns the context of the package's one Chromium, started on
// first use.
func browser(t testing.TB) context.Context {
	t.Helper()
	shared.browserOnce.Do(startBrowser)
	if shared.browserMissing != "" {
		unavailable(t, shared.browserMissing)
	}
	if shared.browserErr != nil {
		t.Fatalf("starting Chromium: %v\nChromium's output:\n%s", shared.browserErr, shared.browserLog.String())
	}
	return shared.browserCtx
}

func startBrowser() {
	path, missing := chromiumPath()
	if missing != "" {
		shared.browserMissing = missing
		return
	}
	userData, err := os.MkdirTemp("", "keybroker-chromium-")
	if err != nil {
		shared.browserErr = err
		return
	}
	shared.userDataDir = userData
	shared.browserLog = &syncBuffer{}
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(path),
		chromedp.UserDataDir(userData),
		// Root in a container has no user namespace for the sandbox.
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		// Chromium's own background connections (QUIC probes, component
		// and sync updates) go nowhere on a closed network.
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.WSURLReadTimeout(stepTimeout),
		chromedp.CombinedOutput(shared.browserLog),
	)
	allocCtx, allocCancel := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancel := chromedp.NewContext(allocCtx)
	shared.allocCancel, shared.browserCancel = allocCancel, cancel
	// The first Run starts the browser, which lives as long as ctx: it
	// takes no deadline, so the start is bounded here instead.
	done := make(chan error, 1)
	go func() { done <- chromedp.Do(ctx) }()
	timer := time.NewTimer(stepTimeout)
	defer timer.Stop()
	select {
	case err := <-done:
		shared.browserErr = err
	case <-timer.C:
		cancel()
		shared.browserErr = fmt.Errorf("Chromium did not start within %s", stepTimeout)
	}
	if shared.browserErr == nil {
		shared.browserCtx = ctx
	}
}

// tab is one browser tab on the test page.
type tab struct {
	ctx     context.Context
	console *syncBuffer
}

// openTab opens a tab on pageURL. A fresh profile (a new browser context:
// no cookies, storage or HTTP cache in common with other tabs) stands for
// another device. cookie, when set, is stored for keybroker's origin, to
// see which requests carry credentials.
func openTab(t *testing.T, pageURL string, freshProfile bool, cookie *network.SetCookieParams) *tab {
	t.Helper()
	var opts []chromedp.ContextOption
	if freshProfile {
		opts = append(opts, chromedp.WithNewBrowserContext())
	}
	ctx, cancel := chromedp.NewContext(browser(t), opts...)
	t.Cleanup(cancel)
	tb := &tab{ctx: ctx, console: &syncBuffer{}}
	// The first Run opens the tab, whose life is ctx's: bounded here.
	done := make(chan error, 1)
	go func() {
		if err := chromedp.Do(ctx); err != nil {
			done <- fmt.Errorf("open tab: %w", err)
			return
		}
		if cookie != nil {
			if _, err := chromedp.Call(ctx, network.SetCookie, *cookie); err != nil {
				done <- fmt.Errorf("set cookie: %w", err)
				return
			}
		}
		done <- nil
	}()
	timer := time.NewTimer(stepTimeout)
	defer timer.Stop()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-timer.C:
		cancel()
		t.Fatalf("the tab did not open within %s", stepTimeout)
	}
	messages := chromedp.Console(ctx)
	go func() {
		for m, err := range messages {
			if err != nil {
				return
			}
			fmt.Fprintf(tb.console, "%s\n", m)
		}
	}()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("the page's console:\n%s", tb.console.String())
		}
	})
	navCtx, navCancel := context.WithTimeout(ctx, stepTimeout)
	defer navCancel()
	require.NoError(t, chromedp.Do(navCtx, chromedp.Navigate(pageURL)), "navigate to %s", pageURL)
	return tb
}

// call runs export fn of the page module module with args and decodes
// what it resolves to into out. The page's run() catches what a step
// throws and reports it, so a failure names the step.
func (tb *tab) call(t *testing.T, module, fn string, args, out any) {
	t.Helper()
	argJSON, err := json.Marshal(args)
	require.NoError(t, err)
	expr := fmt.Sprintf(`import(%q).then(m => m.run(%q, %s))`, module, fn, argJSON)
	ctx, cancel := context.WithTimeout(tb.ctx, stepTimeout)
	defer cancel()
	raw, err := chromedp.Run(ctx, chromedp.Evaluate[json.RawMessage](expr, chromedp.EvalAwaitPromise))
	require.NoError(t, err, "%s %s", module, fn)
	var res struct {
		OK    bool            `json:"ok"`
		Value json.RawMessage `json:"value"`
		Error json.RawMessage `json:"error"`
	}
	require.NoError(t, json.Unmarshal(raw, &res), "%s", raw)
	require.True(t, res.OK, "%s %s threw: %s", module, fn, res.Error)
	if out != nil {
		require.NoError(t, json.Unmarshal(res.Value, out), "%s %s: %s", module, fn, res.Value)
	}
}

// pageServer serves the test pages (testdata/page) and the SDK's build
// under /sdk/, on an origin of its own: the app's.
func pageServer(t *testing.T, sdkDir string) *httptest.Server {
	t.Helper()
	mux := http.NewServeMux()
	mux.Handle("/sdk/", http.StripPrefix("/sdk/", http.FileServer(http.Dir(filepath.Join(sdkDir, "dist")))))
	mux.Handle("/", http.FileServer(http.Dir(filepath.Join("testdata", "page"))))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv
}

// keybroker is a vault API for the page, with CORS for the page's
// origin, behind a recorder of what the browser sent.
type keybroker struct {
	URL string
	*apitest.Server
	rec *recorder
}

func startKeybroker(t *testing.T, pageOrigin string, opts apitest.Options) *keybroker {
	t.Helper()
	configure := opts.API
	opts.API = func(c *vaultapi.Config) {
		c.CORSOrigins = []string{pageOrigin}
		if configure != nil {
			configure(c)
		}
	}
	srv := apitest.Start(t, opts)
	rec := &recorder{}
	front := httptest.NewServer(rec.wrap(srv.API.Handler()))
	t.Cleanup(front.Close)
	return &keybroker{URL: front.URL, Server: srv, rec: rec}
}

// pageError is what the page's describe() reports of a thrown error.
type pageError struct {
	Name         string `json:"name"`
	Message      string `json:"message"`
	Code         string `json:"code"`
	Status       int    `json:"status"`
	RetryAfterMs *int   `json:"retryAfterMs"`
	RequestID    string `json:"requestId"`
	// Class is the SDK class the error is an instance of ("" when none).
	Class string `json:"class"`
}

// requirePageError asserts a step caught err of the SDK class class with
// code (code "" for the SDK's own errors).
func requirePageError(t *testing.T, err *pageError, class, code string, status int) {
	t.Helper()
	require.NotNil(t, err, "no error was thrown; want %s %s", class, code)
	require.Equal(t, class, err.Class, "%+v", *err)
	require.Equal(t, code, err.Code, "%+v", *err)
	require.Equal(t, status, err.Status, "%+v", *err)
}

// requirePreflighted asserts what a browser does with the vault routes
// cross-origin: every request it sent was preceded by a preflight of its
// path whose answer allowed its method (the bearer token is not a
// CORS-safelisted header; the browser caches a preflight's answer for
// the URL, so one preflight may serve several methods), preflights carry
// neither the token nor cookies, and every real request carries the
// page's Origin and the token, and got the CORS answer that let the page
// read it.
func requirePreflighted(t *testing.T, reqs []seen, pageOrigin string) {
	t.Helper()
	require.NotEmpty(t, reqs)
	allowed := map[string][]string{} // path -> methods a preflight allowed
	for i, r := range reqs {
		if r.preflight() {
			require.Empty(t, r.Authorization, "a preflight carries no token: %+v", r)
			require.Empty(t, r.Cookie, "a preflight carries no credentials: %+v", r)
			require.Equal(t, pageOrigin, r.Origin)
			require.Contains(t, strings.ToLower(r.RequestHeaders), "authorization", "%+v", r)
			require.Equal(t, http.StatusNoContent, r.Status)
			require.Equal(t, pageOrigin, r.AllowOrigin)
			require.Equal(t, "true", r.AllowCredentials)
			for _, m := range strings.Split(r.AllowMethods, ",") {
				allowed[r.Path] = append(allowed[r.Path], strings.TrimSpace(m))
			}
			require.Contains(t, allowed[r.Path], r.RequestMethod)
			continue
		}
		key := r.Method + " " + r.Path
		require.True(t, slices.Contains(allowed[r.Path], r.Method), "request %d, %s, came without a preflight that allowed it", i, key)
		require.Equal(t, pageOrigin, r.Origin, "%+v", r)
		require.True(t, strings.HasPrefix(r.Authorization, "Bearer ey"), "%s carries no bearer token", key)
		require.Equal(t, pageOrigin, r.AllowOrigin, "%s", key)
		require.Equal(t, "true", r.AllowCredentials, "%s", key)
		require.Contains(t, r.ExposeHeaders, "Retry-After", "%s", key)
	}
}
