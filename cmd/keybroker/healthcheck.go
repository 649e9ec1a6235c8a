package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"

	"github.com/keybroker/keybroker/cmd/keybroker/internal/config"
)

// healthPath is the liveness endpoint the container health checks and
// probes call.
const healthPath = "/healthz"

const healthcheckUsage = `Usage: keybroker healthcheck [--url URL] [--ca-file PATH] [--timeout 3s]

GETs URL (default: /healthz on the address serve listens on, from the
same $PORT and $KEYBROKER_ADDR) and exits 0 on 200, 1 otherwise: the
health check of images without a shell or curl.

When serve speaks TLS ($KEYBROKER_TLS_CERT is set, as it is for serve in
the same container or unit) the default URL is https, and the check
trusts exactly the certificate serve presents, under the name it carries:
no CA, no certificate check switched off. --ca-file names other PEM
certificates to trust (a CA). A plain http URL to a TLS server fails.

Flags:
`

// cmdHealthcheck is the container health check: the runtime image has no
// shell or curl, so the binary checks itself. It reads the same $PORT,
// $KEYBROKER_ADDR and $KEYBROKER_TLS_CERT as serve, so the default URL
// follows the server, https included.
func cmdHealthcheck(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cfg, err := config.Resolve(config.Healthcheck, args, getenv, stderr, healthcheckUsage)
	if err != nil {
		return err
	}
	target := cfg.Tool.URL
	if target == "" {
		scheme := "http"
		if cfg.Ops.TLSCert != "" {
			scheme = "https"
		}
		u, err := localURL(cfg.Server.Addr, scheme, healthPath)
		if err != nil {
			return fmt.Errorf("healthcheck: %w", err)
		}
		target = u
	}
	u, err := url.Parse(target)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	// No proxy: the check is about this container, not what an
	// $HTTP_PROXY in its environment can reach.
	transport := &http.Transport{Proxy: nil}
	if u.Scheme == "https" {
		if transport.TLSClientConfig, err = healthcheckTLS(cfg, u.Hostname()); err != nil {
			return fmt.Errorf("healthcheck: %w", err)
		}
	}

	ctx, cancel := context.WithTimeout(ctx, cfg.Tool.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	client := &http.Client{Transport: transport}
	res, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	defer res.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(res.Body, 1<<16))
	if res.StatusCode != http.StatusOK {
		hint := ""
		if res.StatusCode == http.StatusBadRequest && u.Scheme == "http" {
			hint = " (a TLS server answers plain http with 400: set $KEYBROKER_TLS_CERT as serve has it, or use an https URL)"
		}
		return fmt.Errorf("healthcheck: GET %s: %s%s", target, res.Status, hint)
	}
	fmt.Fprintln(stdout, "ok")
	return nil
}

// healthcheckTLS trusts the certificates of --ca-file, else serve's own
// certificate ($KEYBROKER_TLS_CERT), else the system's roots. Calling
// serve on a loopback address, it expects the name serve's certificate
// carries, which the loopback address is not.
func healthcheckTLS(cfg *config.Config, host string) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	roots := cfg.Tool.CAFile
	if roots == "" {
		roots = cfg.Ops.TLSCert
	}
	if roots != "" {
		pem, err := os.ReadFile(roots)
		if err != nil {
			return nil, fmt.Errorf("certificates to trust: %w", err)
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("certificates to trust: no PEM certificate in %s", roots)
		}
	}
	if ip := net.ParseIP(host); (ip != nil && ip.IsLoopback()) || host == "localhost" {
		if cfg.Ops.TLSCert != "" {
			name, err := certName(cfg.Ops.TLSCert)
			if err != nil {
				return nil, err
			}
			tc.ServerName = name
		}
	}
	return tc, nil
}

// certName is a name the leaf certificate of a PEM chain is valid for:
// its first DNS name, else its first IP address.
func certName(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("serve's certificate: %w", err)
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" {
		return "", fmt.Errorf("serve's certificate: no PEM certificate in %s", path)
	}
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return "", fmt.Errorf("serve's certificate %s: %w", path, err)
	}
	switch {
	case len(leaf.DNSNames) > 0:
		return leaf.DNSNames[0], nil
	case len(leaf.IPAddresses) > 0:
		return leaf.IPAddresses[0].String(), nil
	}
	return "", fmt.Errorf("serve's certificate %s names no host (no subjectAltName): clients refuse it", path)
}

// localURL turns a listen address into a URL this host can call: an
// unspecified host (":3001", "0.0.0.0:3001", "[::]:3001") becomes the
// loopback address.
func localURL(addr, scheme, path string) (string, error) {
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
	return (&url.URL{Scheme: scheme, Host: net.JoinHostPort(host, port), Path: path}).String(), nil
}
