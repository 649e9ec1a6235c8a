package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"

	"github.com/keybroker/keybroker/cmd/keybroker/internal/config"
)

// healthPath is the liveness endpoint the container health checks and
// probes call.
const healthPath = "/healthz"

const healthcheckUsage = `Usage:
  keybroker healthcheck [--url URL] [--timeout 3s]
      GET URL (default: /healthz on the address serve listens on) and exit
      0 on 200, 1 otherwise. For HEALTHCHECK in images without a shell.
`

// cmdHealthcheck is the container health check: the runtime image has no
// shell or curl, so the binary checks itself. It reads the same $PORT and
// $KEYBROKER_ADDR as serve, so the default URL follows the server.
func cmdHealthcheck(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cfg, err := config.Resolve(config.Healthcheck, args, getenv, stderr, healthcheckUsage)
	if err != nil {
		return err
	}
	target := cfg.Tool.URL
	if target == "" {
		u, err := localURL(cfg.Server.Addr, healthPath)
		if err != nil {
			return fmt.Errorf("healthcheck: %w", err)
		}
		target = u
	}
	if u, err := url.Parse(target); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("healthcheck: --url %q: want http://host:port/path", target)
	}

	ctx, cancel := context.WithTimeout(ctx, cfg.Tool.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	// No proxy: the check is about this container, not what an
	// $HTTP_PROXY in its environment can reach.
	client := &http.Client{Transport: &http.Transport{Proxy: nil}}
	res, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	defer res.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(res.Body, 1<<16))
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("healthcheck: GET %s: %s", target, res.Status)
	}
	fmt.Fprintln(stdout, "ok")
	return nil
}

// localURL turns a listen address into a URL this host can call: an
// unspecified host (":3001", "0.0.0.0:3001", "[::]:3001") becomes the
// loopback address.
func localURL(addr, path string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("listen address %q: %w", addr, err)
	}
	switch ip := net.ParseIP(host); {
	case host == "" || (ip != nil && ip.IsUnspecified() && ip.To4() != nil):
		host = "127.0.0.1"
	case ip != nil && ip.IsUnspecified():
		host = "::1"
	}
	return (&url.URL{Scheme: "http", Host: net.JoinHostPort(host, port), Path: path}).String(), nil
}
