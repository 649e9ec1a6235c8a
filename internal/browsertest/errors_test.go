package browsertest_test

import (
	"context"
	"crypto/rand"
	"errors"
	"net/http"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/internal/testkit/apitest"
	"github.com/keybroker/keybroker/kek"
	"github.com/keybroker/keybroker/kekproviders/localkek"
	"github.com/keybroker/keybroker/vaultapi"
)

// TestSDKErrorsInBrowser: what the page gets when keybroker says "not
// now" or "not you", with the headers a browser lets a cross-origin page
// read (Retry-After is exposed through CORS, or the SDK could not honour
// it).
func TestSDKErrorsInBrowser(t *testing.T) {
	t.Parallel()
	page := pageServer(t, builtSDK(t))
	tb := openTab(t, page.URL+"/index.html", false, nil)

	// 429: the SDK reports Retry-After when told not to retry, and waits
	// it out before its retry otherwise.
	t.Run("RateLimitedWaitsRetryAfter", func(t *testing.T) {
		// One request per four seconds: the next within that window is
		// refused with Retry-After. (The window is wide so that a loaded
		// machine still sends the next requests inside it.)
		kb := startKeybroker(t, page.URL, apitest.Options{API: func(c *vaultapi.Config) {
			c.RateLimit = vaultapi.RateLimit{PerSecond: 0.25, Burst: 1}
		}})
		var out struct {
			First, Second, Patient *pageError
			WaitedMs               float64 `json:"waitedMs"`
		}
		tb.call(t, "/story.js", "rateLimited", map[string]any{"api": kb.URL, "token": mint(t, kb.Issuer, "hasty")}, &out)
		require.Nil(t, out.First)
		requirePageError(t, out.Second, "RateLimitedError", vaultapi.CodeRateLimited, http.StatusTooManyRequests)
		require.NotNil(t, out.Second.RetryAfterMs, "the page could not read Retry-After")
		require.Contains(t, []int{1000, 2000, 3000, 4000}, *out.Second.RetryAfterMs)
		require.Nil(t, out.Patient, "the SDK's retry after Retry-After succeeds")

		var statuses []int
		var refusedAt time.Time
		var waitFor time.Duration
		for _, r := range kb.rec.all() {
			if r.preflight() {
				continue
			}
			statuses = append(statuses, r.Status)
			if r.Status == http.StatusOK && !refusedAt.IsZero() {
				require.GreaterOrEqual(t, r.Received.Sub(refusedAt), waitFor, "the retry came before Retry-After")
			}
			if r.Status == http.StatusTooManyRequests {
				secs, err := strconv.Atoi(r.RetryAfter)
				require.NoError(t, err)
				refusedAt, waitFor = r.Answered, time.Duration(secs)*time.Second
			}
		}
		require.Equal(t, []int{200, 429, 429, 200}, statuses, "the patient client was refused once, then waited")
		require.GreaterOrEqual(t, out.WaitedMs, float64(waitFor.Milliseconds())-1)
	})

	// 503: a dependency is down (here the KEK's backend stops
	// answering). The page reads the code and Retry-After; a wait longer
	// than the client's maxDelayMs is left to the app, at once.
	t.Run("UnavailableReportsRetryAfter", func(t *testing.T) {
		kek := &outageKEK{KEK: newLocalKEK(t, "env-v1")}
		ring, err := broker.NewKeyring(kek)
		require.NoError(t, err)
		kb := startKeybroker(t, page.URL, apitest.Options{Keyring: ring})
		_, err = kb.Service.Init(t.Context(), "stranded", broker.RequestMeta{})
		require.NoError(t, err)
		kek.down.Store(true)

		var out struct {
			NoRetry *pageError `json:"noRetry"`
			TooLong *pageError `json:"tooLong"`
		}
		tb.call(t, "/story.js", "unavailable", map[string]any{"api": kb.URL, "token": mint(t, kb.Issuer, "stranded")}, &out)
		for _, e := range []*pageError{out.NoRetry, out.TooLong} {
			requirePageError(t, e, "UnavailableError", vaultapi.CodeKEKUnavailable, http.StatusServiceUnavailable)
			require.NotNil(t, e.RetryAfterMs, "the page could not read Retry-After")
			require.Equal(t, 5000, *e.RetryAfterMs)
			require.NotEmpty(t, e.RequestID, "X-Request-Id is exposed to the page")
		}
		fetches := 0
		for _, r := range kb.rec.all() {
			if !r.preflight() {
				fetches++
				require.Equal(t, "GET /key", r.Method+" "+r.Path)
			}
		}
		require.Equal(t, 2, fetches, "no retry: Retry-After is over the clients' maxDelayMs")
	})

	// An origin keybroker does not list: the browser stops at the
	// preflight, so the token never leaves the page, and the SDK says
	// where to look.
	t.Run("UnlistedOriginNeverSendsTheToken", func(t *testing.T) {
		kb := startKeybroker(t, "https://app.example.com", apitest.Options{})
		var out struct {
			Refused *pageError `json:"refused"`
		}
		tb.call(t, "/story.js", "foreignOrigin", map[string]any{"api": kb.URL, "token": mint(t, kb.Issuer, "alice")}, &out)
		requirePageError(t, out.Refused, "NetworkError", "", 0)
		require.Contains(t, out.Refused.Message, "KEYBROKER_CORS_ORIGINS")
		reqs := kb.rec.all()
		require.Len(t, reqs, 1, "only the preflight reached keybroker: %+v", reqs)
		require.True(t, reqs[0].preflight())
		require.Empty(t, reqs[0].Authorization)
		require.Equal(t, page.URL, reqs[0].Origin)
		require.Empty(t, reqs[0].AllowOrigin)
	})
}

// outageKEK is a local KEK whose backend can be made to stop answering:
// while down, every call fails as a provider reports an unreachable
// backend (kek.UnavailableError).
type outageKEK struct {
	broker.KEK
	down atomic.Bool
}

func (k *outageKEK) Wrap(ctx context.Context, plaintext []byte, binding map[string]string) ([]byte, error) {
	if k.down.Load() {
		return nil, &kek.UnavailableError{Err: errors.New("test: the KEK backend is down")}
	}
	return k.KEK.Wrap(ctx, plaintext, binding)
}

func (k *outageKEK) Unwrap(ctx context.Context, ciphertext []byte, binding map[string]string) ([]byte, error) {
	if k.down.Load() {
		return nil, &kek.UnavailableError{Err: errors.New("test: the KEK backend is down")}
	}
	return k.KEK.Unwrap(ctx, ciphertext, binding)
}

func newLocalKEK(t *testing.T, id string) broker.KEK {
	t.Helper()
	key := make([]byte, localkek.KeySize)
	_, _ = rand.Read(key)
	kek, err := localkek.New(id, key, false)
	require.NoError(t, err)
	return kek
}
