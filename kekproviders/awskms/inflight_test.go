package awskms_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/kek"
	"github.com/keybroker/keybroker/kekproviders/awskms"
)

// slowKMS is a local KMS peer that answers Decrypt after holding each
// request until release is closed, and records how many requests and TCP
// connections it saw at once.
type slowKMS struct {
	srv                   *httptest.Server
	release               chan struct{}
	now, peak, conns, req atomic.Int32
}

func startSlowKMS(t *testing.T) *slowKMS {
	t.Helper()
	k := &slowKMS{release: make(chan struct{})}
	k.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		k.req.Add(1)
		n := k.now.Add(1)
		defer k.now.Add(-1)
		for p := k.peak.Load(); n > p && !k.peak.CompareAndSwap(p, n); p = k.peak.Load() {
		}
		select {
		case <-k.release:
		case <-r.Context().Done():
			return
		}
		w.Header().Set("Content-Type", "application/x-amz-json-1.1")
		_ = json.NewEncoder(w).Encode(map[string]string{
			"KeyId":     "arn:aws:kms:eu-central-1:111122223333:key/slow",
			"Plaintext": base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123456789abcdef")),
		})
	}))
	k.srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			k.conns.Add(1)
		}
	}
	k.srv.Start()
	t.Cleanup(k.srv.Close)
	return k
}

// waitFor polls cond for up to 30 s: it waits for an event, and the bound
// only ends a test that would otherwise hang.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// connCounter dials TCP and counts the connections it has open at once:
// from a dial's start to its connection's Close, as the client sees them.
// (The server sees a close only when it reads the end of the stream, a
// moment later, so its own count may briefly overlap a replacement.)
type connCounter struct {
	open, peak, dialled atomic.Int32
}

func (c *connCounter) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	n := c.open.Add(1)
	for p := c.peak.Load(); n > p && !c.peak.CompareAndSwap(p, n); p = c.peak.Load() {
	}
	conn, err := (&net.Dialer{}).DialContext(ctx, network, addr)
	if err != nil {
		c.open.Add(-1)
		return nil, err
	}
	c.dialled.Add(1)
	return &countedConn{Conn: conn, closed: func() { c.open.Add(-1) }}, nil
}

type countedConn struct {
	net.Conn
	once   sync.Once
	closed func()
}

func (c *countedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.closed)
	return err
}

func TestNoMoreThanMaxInFlightDecryptsReachTheKMS(t *testing.T) {
	t.Parallel()
	const bound, callers = 4, 48
	peer := startSlowKMS(t)
	conns := &connCounter{}
	kek := newKEK(t, peer.srv.URL, "alias/slow", "aws-1", oneAttempt,
		func(c *awskms.Config) { c.MaxInFlight = bound }, awskms.WithDial(conns.dial))

	var wg sync.WaitGroup
	errs := make(chan error, callers)
	for range callers {
		wg.Go(func() {
			pt, err := kek.Unwrap(t.Context(), []byte("wrapped"), map[string]string{"user_id": "u"})
			if err == nil && len(pt) != 32 {
				err = errors.New("short plaintext")
			}
			errs <- err
		})
	}
	// Every slot fills and every other caller waits for one, so nothing
	// more can reach the KMS while the slots are held.
	waitFor(t, "the slots to fill", func() bool { return peer.now.Load() == bound })
	waitFor(t, "the other callers to queue", func() bool { return awskms.Waiting(kek) == callers-bound })
	require.EqualValues(t, bound, peer.req.Load(), "requests that reached the KMS while the slots were held")
	close(peer.release)
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.EqualValues(t, callers, peer.req.Load())
	require.EqualValues(t, bound, peer.peak.Load(), "most decrypts in flight at once")
	require.LessOrEqual(t, conns.peak.Load(), int32(bound), "TCP connections open to the KMS at once")
	require.GreaterOrEqual(t, conns.dialled.Load(), int32(bound), "each held call had a connection of its own")
}

func TestAWaitingCallerKeepsItsDeadline(t *testing.T) {
	t.Parallel()
	peer := startSlowKMS(t)
	k := newKEK(t, peer.srv.URL, "alias/slow", "aws-1", oneAttempt, func(c *awskms.Config) { c.MaxInFlight = 1 })
	held := make(chan error, 1)
	go func() {
		_, err := k.Unwrap(t.Context(), []byte("wrapped"), nil)
		held <- err
	}()
	waitFor(t, "the one slot to be taken", func() bool { return peer.now.Load() == 1 })

	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	// The held call never ends until release is closed: returning at
	// all means the waiter gave up at its own deadline.
	_, err := k.Unwrap(ctx, []byte("wrapped"), nil)
	require.Error(t, err)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	var unavailable *kek.UnavailableError
	require.ErrorAs(t, err, &unavailable)
	require.ErrorContains(t, err, "slots")
	require.EqualValues(t, 1, peer.req.Load(), "the waiting call never reached the KMS")

	close(peer.release)
	require.NoError(t, <-held)
}

func TestMaxInFlightDefaultsAndRefusesNegative(t *testing.T) {
	t.Parallel()
	_, err := awskms.New(t.Context(), awskms.Config{ID: "a", KeyID: "alias/x", Region: "eu-central-1", MaxInFlight: -1})
	require.ErrorContains(t, err, "MaxInFlight")
	require.Equal(t, 32, awskms.DefaultMaxInFlight)
}
