// Package localkms runs local-kms (github.com/nsmithuk/local-kms), an AWS
// KMS implementation, inside the test process on a 127.0.0.1 listener the
// test owns. The stock binary listens on all interfaces; serving its
// request handler ourselves keeps it on loopback.
//
// Keys are created through the KMS API (local-kms's seeding is
// unexported). Its ciphertexts are not AWS's format: never parse them.
// Known differences from AWS: RotateKeyOnDemand answers 501, and Decrypt
// without a KeyId under a disabled key answers AccessDeniedException where
// AWS says DisabledException.
//
// Tests of other packages (the re-wrap job, benchmarks) reuse it.
package localkms

import (
	"context"
	"errors"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	localkms "github.com/nsmithuk/local-kms/src"
	"github.com/nsmithuk/local-kms/src/config"
	"github.com/nsmithuk/local-kms/src/data"
	"github.com/stretchr/testify/require"
)

// Region and AccountID are what every server in this process reports in
// its ARNs. local-kms keeps them in package variables, so they are one
// pair per process; a client's region must match for ARNs to resolve.
const (
	Region    = "eu-central-1"
	AccountID = "111122223333"
)

var setGlobals sync.Once

// Server is one local-kms instance with its own database.
type Server struct {
	// URL is the base endpoint, http://127.0.0.1:PORT.
	URL string

	srv       *http.Server
	db        *data.Database
	closeOnce sync.Once
	served    chan struct{}
	requests  atomic.Int64
	describes atomic.Int64
}

// Start starts a server on a fresh 127.0.0.1 port with an empty database
// in a temporary directory; it stops when the test ends.
func Start(t testing.TB) *Server {
	t.Helper()
	setGlobals.Do(func() {
		config.AWSRegion = Region
		config.AWSAccountId = AccountID
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	db := data.NewDatabase(t.TempDir())
	s := &Server{
		URL:    "http://" + ln.Addr().String(),
		db:     db,
		served: make(chan struct{}),
	}
	s.srv = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			s.requests.Add(1)
			if r.Header.Get("X-Amz-Target") == "TrentService.DescribeKey" {
				s.describes.Add(1)
			}
			localkms.HandleRequest(w, r, db)
		}),
		ReadHeaderTimeout: 10 * time.Second,
	}
	go func() {
		defer close(s.served)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("localkms: serve: %v", err)
		}
	}()
	t.Cleanup(s.Close)
	return s
}

// Close stops the server at once, dropping open connections, and closes
// its database: afterwards the endpoint refuses connections, as an AWS
// endpoint that is unreachable would. It is safe to call twice.
func (s *Server) Close() {
	s.closeOnce.Do(func() {
		s.srv.Close()
		<-s.served
		s.db.Close()
	})
}

// Requests is the number of API requests the server has received so far,
// whatever their outcome: benchmarks report KMS calls per key fetch with it.
func (s *Server) Requests() int64 { return s.requests.Load() }

// DescribeKeys is how many of the Requests were DescribeKey, the call
// of a KEK's status probe.
func (s *Server) DescribeKeys() int64 { return s.describes.Load() }

// Credentials are static credentials; local-kms accepts any.
func Credentials() aws.CredentialsProvider {
	return credentials.NewStaticCredentialsProvider("AKIDLOCALKMS", "local-kms-secret", "")
}

// Client returns an SDK client for administering the server (creating and
// disabling keys) in tests.
func (s *Server) Client() *kms.Client {
	return kms.New(kms.Options{
		Region:       Region,
		BaseEndpoint: aws.String(s.URL),
		Credentials:  Credentials(),
	})
}

// Key is a key created on the server.
type Key struct {
	ID    string // the key id (a UUID)
	ARN   string
	Alias string // "alias/…", empty when none was asked for
}

// CreateKey creates a symmetric encryption key and, when alias is not
// empty, the alias "alias/<alias>" pointing at it.
func (s *Server) CreateKey(t testing.TB, alias string) Key {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	client := s.Client()
	out, err := client.CreateKey(ctx, &kms.CreateKeyInput{
		KeySpec:  types.KeySpecSymmetricDefault,
		KeyUsage: types.KeyUsageTypeEncryptDecrypt,
	})
	require.NoError(t, err)
	key := Key{ID: aws.ToString(out.KeyMetadata.KeyId), ARN: aws.ToString(out.KeyMetadata.Arn)}
	if alias != "" {
		key.Alias = "alias/" + alias
		_, err := client.CreateAlias(ctx, &kms.CreateAliasInput{AliasName: aws.String(key.Alias), TargetKeyId: aws.String(key.ID)})
		require.NoError(t, err)
	}
	return key
}

// DisableKey disables a key: encrypt and decrypt under it are refused.
func (s *Server) DisableKey(t testing.TB, keyID string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	_, err := s.Client().DisableKey(ctx, &kms.DisableKeyInput{KeyId: aws.String(keyID)})
	require.NoError(t, err)
}
