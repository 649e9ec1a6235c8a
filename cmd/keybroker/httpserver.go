package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/keybroker/keybroker/cmd/keybroker/internal/config"
)

// HTTP server limits. A slow client cannot hold a connection open by
// trickling headers (ReadHeaderTimeout) or a body (ReadTimeout), and the
// header size is far above what a bearer token needs and far below what
// would cost memory.
const (
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 15 * time.Second
	writeTimeout      = 30 * time.Second
	idleTimeout       = 120 * time.Second
	maxHeaderBytes    = 16 << 10
)

// newHTTPServer returns the API's server with keybroker's limits.
func newHTTPServer(handler http.Handler, log *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
}

// certReloader serves a certificate loaded from files and swaps it for
// the files' new contents on reload, so that a renewed certificate takes
// effect on SIGHUP without dropping a connection.
type certReloader struct {
	certFile, keyFile string
	cert              atomic.Pointer[tls.Certificate]
}

// newCertReloader loads the pair once; a bad pair stops the start.
func newCertReloader(certFile, keyFile string) (*certReloader, error) {
	r := &certReloader{certFile: certFile, keyFile: keyFile}
	if err := r.reload(); err != nil {
		return nil, err
	}
	return r, nil
}

// reload reads the pair again. On error the certificate in use stays.
func (r *certReloader) reload() error {
	cert, err := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if err != nil {
		// The error names the files, never their contents.
		return fmt.Errorf("TLS certificate %s with key %s: %w", r.certFile, r.keyFile, err)
	}
	r.cert.Store(&cert)
	return nil
}

func (r *certReloader) getCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return r.cert.Load(), nil
}

// tlsConfig serves the reloader's current certificate, TLS 1.2 or newer.
func (r *certReloader) tlsConfig() *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: r.getCertificate,
		NextProtos:     []string{"h2", "http/1.1"},
	}
}

// reloadOn reloads the certificate each time sig delivers, until ctx
// ends. A failed reload is logged and the old certificate kept: a
// half-written renewal must not take the service down.
func (r *certReloader) reloadOn(ctx context.Context, sig <-chan os.Signal, log *slog.Logger, reloaded func(error)) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-sig:
		}
		err := r.reload()
		if err != nil {
			log.Error("TLS certificate reload failed; keeping the current one", slog.String("error", err.Error()))
		} else {
			log.Info("TLS certificate reloaded", slog.String("cert", r.certFile))
		}
		if reloaded != nil {
			reloaded(err)
		}
	}
}

// serveTLS, when TLS is configured, loads the certificate, starts the
// SIGHUP reloader and returns ln wrapped in TLS; otherwise ln as is. On
// error it closes ln.
func serveTLS(ctx context.Context, cfg config.Ops, srv *http.Server, ln net.Listener, log *slog.Logger) (net.Listener, error) {
	if cfg.TLSCert == "" {
		return ln, nil
	}
	r, err := newCertReloader(cfg.TLSCert, cfg.TLSKey)
	if err != nil {
		ln.Close()
		return nil, err
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGHUP)
	go func() {
		defer signal.Stop(sig)
		r.reloadOn(ctx, sig, log, nil)
	}()
	srv.TLSConfig = r.tlsConfig()
	log.Info("serving HTTPS", slog.String("cert", cfg.TLSCert))
	return tls.NewListener(ln, srv.TLSConfig), nil
}
