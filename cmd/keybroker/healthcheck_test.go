package main

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestHealthcheck(t *testing.T) {
	t.Parallel()
	var healthy atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != healthPath {
			http.NotFound(w, r)
			return
		}
		if !healthy.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		w.Write([]byte(`{"status":"ok"}`))
	}))
	defer srv.Close()
	_, port, err := net.SplitHostPort(srv.Listener.Addr().String())
	require.NoError(t, err)
	check := func(env map[string]string, args ...string) (string, error) {
		var out bytes.Buffer
		err := run(context.Background(), append([]string{"healthcheck"}, args...), envFunc(env), &out, &out, nil)
		return out.String(), err
	}

	_, err = check(nil, "--url", srv.URL+healthPath)
	require.ErrorContains(t, err, "503")

	healthy.Store(true)
	out, err := check(nil, "--url", srv.URL+healthPath)
	require.NoError(t, err)
	require.Equal(t, "ok\n", out)

	t.Run("DefaultURLFollowsServeAddress", func(t *testing.T) {
		// serve with PORT=<port> listens on :<port>; the check calls the
		// loopback address on that port, path /healthz.
		_, err := check(map[string]string{"PORT": port})
		require.NoError(t, err)
		_, err = check(map[string]string{"KEYBROKER_ADDR": "0.0.0.0:" + port, "PORT": "1"})
		require.NoError(t, err)
	})
	t.Run("WrongPathFails", func(t *testing.T) {
		_, err := check(nil, "--url", srv.URL+"/nope")
		require.ErrorContains(t, err, "404")
	})
	t.Run("Unreachable", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		addr := ln.Addr().String()
		ln.Close()
		_, err = check(map[string]string{"KEYBROKER_ADDR": addr})
		require.ErrorContains(t, err, "connection refused")
	})
	t.Run("BadURL", func(t *testing.T) {
		_, err := check(nil, "--url", "localhost:3001/healthz")
		require.ErrorContains(t, err, "want http://host:port/path")
		require.ErrorIs(t, run(context.Background(), []string{"healthcheck", "--bogus"}, envFunc(nil), &bytes.Buffer{}, &bytes.Buffer{}, nil), errUsage)
	})
}

func TestLocalURL(t *testing.T) {
	t.Parallel()
	for addr, want := range map[string]string{
		":3001":          "http://127.0.0.1:3001/healthz",
		"0.0.0.0:3001":   "http://127.0.0.1:3001/healthz",
		"[::]:3001":      "http://[::1]:3001/healthz",
		"127.0.0.1:8080": "http://127.0.0.1:8080/healthz",
		"[::1]:8080":     "http://[::1]:8080/healthz",
		"broker:3001":    "http://broker:3001/healthz",
	} {
		got, err := localURL(addr, "http", healthPath)
		require.NoError(t, err, addr)
		require.Equal(t, want, got, addr)
	}
	_, err := localURL("3001", "http", healthPath)
	require.Error(t, err)
}
