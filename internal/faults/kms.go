package faults

import (
	"context"
	"errors"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	localkmssrc "github.com/nsmithuk/local-kms/src"
	"github.com/nsmithuk/local-kms/src/config"
	"github.com/nsmithuk/local-kms/src/data"

	"github.com/keybroker/keybroker/internal/testkit/kmstest/localkms"
)

// KMS is an AWS KMS (local-kms) that the test can stop and start again on
// the same 127.0.0.1 address, as an outage of the real service would look
// to keybroker: connections refused, then the same keys back. Its keys
// live in a database that outlasts the stops.
type KMS struct {
	// URL is the endpoint, http://127.0.0.1:PORT, the same across restarts.
	URL string

	addr   string
	db     *data.Database
	mu     sync.Mutex
	srv    *http.Server
	served chan struct{}
}

var kmsGlobals sync.Once

// StartKMS starts a KMS on a fresh port; it is stopped when the test ends.
// Its region and account are localkms.Region and localkms.AccountID; any
// static credentials are accepted.
func StartKMS(t testing.TB) *KMS {
	t.Helper()
	kmsGlobals.Do(func() {
		config.AWSRegion = localkms.Region
		config.AWSAccountId = localkms.AccountID
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	k := &KMS{addr: ln.Addr().String(), db: data.NewDatabase(t.TempDir())}
	k.URL = "http://" + k.addr
	k.serve(ln)
	t.Cleanup(func() {
		k.stop()
		k.db.Close()
	})
	return k
}

// Stop takes the KMS away: the listener closes and open connections are
// dropped, so calls fail at once with connection refused.
func (k *KMS) Stop(t testing.TB) {
	t.Helper()
	k.stop()
}

// Start brings the stopped KMS back on the same address.
func (k *KMS) Start(t testing.TB) {
	t.Helper()
	// Go listeners set SO_REUSEADDR: the port we held a moment ago binds
	// again at once, unless another process took it in between.
	ln, err := net.Listen("tcp", k.addr)
	if err != nil {
		t.Fatalf("faults: KMS cannot listen on %s again: %v", k.addr, err)
	}
	k.serve(ln)
}

func (k *KMS) serve(ln net.Listener) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.srv = &http.Server{
		Handler:           http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { localkmssrc.HandleRequest(w, r, k.db) }),
		ReadHeaderTimeout: 10 * time.Second,
	}
	k.served = make(chan struct{})
	srv, served := k.srv, k.served
	go func() {
		defer close(served)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			panic("faults: KMS serve: " + err.Error())
		}
	}()
}

func (k *KMS) stop() {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.srv == nil {
		return
	}
	_ = k.srv.Close()
	<-k.served
	k.srv = nil
}

// CreateKey creates a symmetric key with the alias "alias/<alias>".
func (k *KMS) CreateKey(t testing.TB, alias string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	client := kms.New(kms.Options{Region: localkms.Region, BaseEndpoint: aws.String(k.URL), Credentials: localkms.Credentials()})
	out, err := client.CreateKey(ctx, &kms.CreateKeyInput{KeySpec: types.KeySpecSymmetricDefault, KeyUsage: types.KeyUsageTypeEncryptDecrypt})
	if err != nil {
		t.Fatalf("faults: KMS create key: %v", err)
	}
	if _, err := client.CreateAlias(ctx, &kms.CreateAliasInput{AliasName: aws.String("alias/" + alias), TargetKeyId: out.KeyMetadata.KeyId}); err != nil {
		t.Fatalf("faults: KMS create alias: %v", err)
	}
}
