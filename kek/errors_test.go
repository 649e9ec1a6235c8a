package kek_test

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/url"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/kek"
)

func TestClassesAreFoundThroughWrapping(t *testing.T) {
	t.Parallel()
	cause := errors.New("dial tcp 127.0.0.1:1: connection refused")
	unavailable := fmt.Errorf("awskms: encrypt: %w", kek.Unavailable(cause))
	require.Equal(t, kek.ClassUnavailable, kek.Classify(unavailable))
	require.ErrorIs(t, unavailable, cause)
	require.Contains(t, unavailable.Error(), "unavailable")

	denied := fmt.Errorf("gcpkms: decrypt: %w", kek.Denied(cause))
	require.Equal(t, kek.ClassDenied, kek.Classify(denied))
	require.ErrorIs(t, denied, cause)

	invalid := fmt.Errorf("localkek: %w: message authentication failed", kek.ErrInvalidCiphertext)
	require.Equal(t, kek.ClassInvalidCiphertext, kek.Classify(invalid))
}

func TestNilStaysNil(t *testing.T) {
	t.Parallel()
	require.NoError(t, kek.Unavailable(nil))
	require.NoError(t, kek.Denied(nil))
}

// TestClassify pins the one answer to "what does this error say": every
// caller (the domain's errors, readiness, the start-up check, `kek check`,
// the metrics' outcome label) asks it.
func TestClassify(t *testing.T) {
	t.Parallel()
	refused := &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}
	for _, c := range []struct {
		name  string
		err   error
		class kek.Class
		label string
	}{
		{"Nil", nil, kek.ClassOK, "ok"},
		{"Unavailable", kek.Unavailable(errors.New("503")), kek.ClassUnavailable, "unavailable"},
		{"Denied", kek.Denied(errors.New("AccessDeniedException")), kek.ClassDenied, "denied"},
		{"InvalidCiphertext", kek.ErrInvalidCiphertext, kek.ClassInvalidCiphertext, "invalid_ciphertext"},
		{"CallerDeadline", context.DeadlineExceeded, kek.ClassTimeout, "timeout"},
		{"PerCallTimeoutClassifiedUnavailable", kek.Unavailable(fmt.Errorf("no answer within 10s: %w", context.DeadlineExceeded)), kek.ClassTimeout, "timeout"},
		{"Canceled", fmt.Errorf("awskms: decrypt: %w", kek.Unavailable(context.Canceled)), kek.ClassCanceled, "canceled"},
		{"NetworkError", fmt.Errorf("jwks: %w", refused), kek.ClassUnavailable, "unavailable"},
		{"URLError", &url.Error{Op: "Get", URL: "https://issuer.example/jwks", Err: errors.New("x509: certificate has expired")}, kek.ClassUnavailable, "unavailable"},
		{"DNSError", &net.DNSError{Err: "no such host", Name: "kms.example", IsNotFound: true}, kek.ClassUnavailable, "unavailable"},
		{"LocalFileIsNoNetworkError", fmt.Errorf("token file: %w", &fs.PathError{Op: "open", Path: "/absent", Err: syscall.ENOENT}), kek.ClassOther, "error"},
		{"DomainUnavailable", domainUnavailable{}, kek.ClassUnavailable, "unavailable"},
		{"FalseUnavailable", falseUnavailable{}, kek.ClassOther, "error"},
		{"Other", errors.New("key usage is SIGN_VERIFY"), kek.ClassOther, "error"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			got := kek.Classify(c.err)
			require.Equal(t, c.class, got)
			require.Equal(t, c.label, got.String())
			require.Equal(t, c.class == kek.ClassUnavailable || c.class == kek.ClassTimeout || c.class == kek.ClassCanceled, got.Outage())
		})
	}
}

// falseUnavailable has the method but says no: it does not count.
type falseUnavailable struct{}

func (falseUnavailable) Error() string     { return "not really" }
func (falseUnavailable) Unavailable() bool { return false }

// domainUnavailable stands for an error of another package (the domain's
// *broker.UnavailableError) that says it by behaviour.
type domainUnavailable struct{}

func (domainUnavailable) Error() string     { return "store unavailable" }
func (domainUnavailable) Unavailable() bool { return true }
