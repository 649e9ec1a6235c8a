package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// selfSigned writes a certificate for 127.0.0.1 with the given serial
// and its key to dir, and returns the certificate.
func selfSigned(t *testing.T, dir string, serial int64) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: "keybroker test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	keyDER, err := x509.MarshalECPrivateKey(key)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "cert.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "key.pem"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600))
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	return cert
}

// servedSerial connects to addr trusting roots and returns the serial of
// the certificate the server presented.
func servedSerial(t *testing.T, addr string, roots *x509.CertPool) int64 {
	t.Helper()
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}, DisableKeepAlives: true}}
	res, err := client.Get("https://" + addr + "/")
	require.NoError(t, err)
	defer res.Body.Close()
	_, _ = io.Copy(io.Discard, res.Body)
	return res.TLS.PeerCertificates[0].SerialNumber.Int64()
}

// TestCertificateReloadsOnSignal: a reload signal swaps the served
// certificate without a restart; a reload of broken files keeps the
// current one.
func TestCertificateReloadsOnSignal(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	first := selfSigned(t, dir, 1)
	r, err := newCertReloader(filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"))
	require.NoError(t, err)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := newHTTPServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {}), slog.New(slog.DiscardHandler))
	srv.TLSConfig = r.tlsConfig()
	go func() { _ = srv.Serve(tls.NewListener(ln, srv.TLSConfig)) }()
	t.Cleanup(func() { _ = srv.Close() })

	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	sig := make(chan os.Signal)
	results := make(chan error)
	go r.reloadOn(ctx, sig, slog.New(slog.DiscardHandler), func(err error) { results <- err })

	roots := x509.NewCertPool()
	roots.AddCert(first)
	require.EqualValues(t, 1, servedSerial(t, ln.Addr().String(), roots))

	second := selfSigned(t, dir, 2)
	roots.AddCert(second)
	sig <- os.Interrupt // any signal value: the channel is what SIGHUP feeds
	require.NoError(t, <-results)
	require.EqualValues(t, 2, servedSerial(t, ln.Addr().String(), roots))

	require.NoError(t, os.WriteFile(filepath.Join(dir, "key.pem"), []byte("half-written"), 0o600))
	sig <- os.Interrupt
	require.Error(t, <-results)
	require.EqualValues(t, 2, servedSerial(t, ln.Addr().String(), roots), "a broken renewal keeps the current certificate")

	_, err = newCertReloader(filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem"))
	require.Error(t, err, "a broken pair stops the start")
}

// TestServeOverTLS: with a certificate and key configured, serve speaks
// HTTPS only.
func TestServeOverTLS(t *testing.T) {
	dir := t.TempDir()
	cert := selfSigned(t, dir, 7)
	jwks := httptest.NewServer(mustIssuer(t).JWKSHandler())
	t.Cleanup(jwks.Close)
	env := map[string]string{
		"KEYBROKER_DATA_DIR":     t.TempDir(),
		"MANA_AUTH_KEK":          base64.StdEncoding.EncodeToString([]byte("0123456789abcdef0123456789abcdef")),
		"KEYBROKER_JWKS_URL":     jwks.URL,
		"KEYBROKER_JWT_ISSUER":   "https://auth.test",
		"KEYBROKER_JWT_AUDIENCE": "https://auth.test",
		"KEYBROKER_ADDR":         "127.0.0.1:0",
		"KEYBROKER_TLS_CERT":     filepath.Join(dir, "cert.pem"),
		"KEYBROKER_TLS_KEY":      filepath.Join(dir, "key.pem"),
	}
	s := startServe(t, env, "serve")
	roots := x509.NewCertPool()
	roots.AddCert(cert)
	require.EqualValues(t, 7, servedSerial(t, s.addr, roots))
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}}}
	res, err := client.Get("https://" + s.addr + "/healthz")
	require.NoError(t, err)
	res.Body.Close()
	require.Equal(t, http.StatusOK, res.StatusCode)
	res, err = http.Get("http://" + s.addr + "/healthz")
	if err == nil {
		res.Body.Close()
		require.Equal(t, http.StatusBadRequest, res.StatusCode, "plain HTTP to a TLS port is refused")
	}
	require.NoError(t, s.stop())
	require.Contains(t, s.logs.String(), "serving HTTPS")
}
