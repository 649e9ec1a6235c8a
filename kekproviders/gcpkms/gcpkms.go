// Package gcpkms is a KEK held in Google Cloud KMS: a symmetric
// ENCRYPT_DECRYPT crypto key that never leaves the service. Wrap is
// Encrypt under the key's primary version, Unwrap is Decrypt (Cloud KMS
// finds the version from the ciphertext, so rotated-out versions keep
// opening old wraps until they are disabled).
//
// The binding is sent as additional authenticated data, encoded
// canonically (kekproviders/internal/binding): a wrap opens only with the
// same user id, KEK id and format.
//
// Integrity: the client library neither sets nor checks the CRC32C
// fields, so this package does, as Google recommends. Every request
// carries plaintext_crc32c or ciphertext_crc32c and
// additional_authenticated_data_crc32c (Castagnoli); every answer must
// report Verified* for each and carry a matching ciphertext_crc32c or
// plaintext_crc32c. An answer that fails a check is discarded and the call
// retried a few times within its timeout; if it keeps failing the error is
// "unavailable" (the data in the store is not at fault).
//
// Credentials are application default credentials (a service account key
// in GOOGLE_APPLICATION_CREDENTIALS, workload identity, the metadata
// server).
package gcpkms

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"regexp"
	"strings"
	"time"

	kms "cloud.google.com/go/kms/apiv1"
	"cloud.google.com/go/kms/apiv1/kmspb"
	"google.golang.org/api/option"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/keybroker/keybroker/kek"
	"github.com/keybroker/keybroker/kekproviders/internal/binding"
)

// DefaultTimeout bounds one call, the library's retries included, when
// Config.Timeout is zero.
const DefaultTimeout = 10 * time.Second

// integrityAttempts is how many answers that fail a checksum check are
// discarded before giving up.
const integrityAttempts = 3

// ErrIntegrity means an answer of Cloud KMS failed a CRC32C check: the
// request or the answer was damaged in transit, or a proxy dropped the
// checksum fields.
var ErrIntegrity = errors.New("Cloud KMS answer failed its integrity check")

var keyNamePattern = regexp.MustCompile(`^projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/]+$`)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func crc32c(data []byte) int64 { return int64(crc32.Checksum(data, castagnoli)) }

// Config selects the key and how to reach it.
type Config struct {
	// ID is the KEK id recorded on every row it wraps.
	ID string
	// KeyName is the crypto key's resource name,
	// projects/P/locations/L/keyRings/R/cryptoKeys/K (not a version:
	// Decrypt takes the key).
	KeyName string
	// Endpoint overrides the service endpoint (host:port); empty means
	// cloudkms.googleapis.com:443.
	Endpoint string
	// Timeout bounds each call, retries included; zero means
	// DefaultTimeout.
	Timeout time.Duration
	// ClientOptions are added to the client's options after Endpoint
	// (tests pass no authentication and plaintext gRPC).
	ClientOptions []option.ClientOption
}

func (c *Config) validate() error {
	if c.ID == "" {
		return errors.New("gcpkms: Config.ID is empty")
	}
	if strings.Contains(c.KeyName, "/cryptoKeyVersions/") {
		return fmt.Errorf("gcpkms: Config.KeyName %q names a key version: name the crypto key (decrypt finds the version itself)", c.KeyName)
	}
	if !keyNamePattern.MatchString(c.KeyName) {
		return fmt.Errorf("gcpkms: Config.KeyName %q: want projects/P/locations/L/keyRings/R/cryptoKeys/K", c.KeyName)
	}
	if c.Timeout < 0 {
		return fmt.Errorf("gcpkms: Config.Timeout is negative (%s)", c.Timeout)
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	return nil
}

// The abilities a Cloud KMS KEK claims. It has no Versioner: a Cloud KMS
// ciphertext names its key version to the service only, which decrypts
// with any enabled version (docs/rotation.md).
var (
	_ kek.KEK           = (*KEK)(nil)
	_ kek.StatusChecker = (*KEK)(nil)
	_ io.Closer         = (*KEK)(nil)
)

// KEK is a key-encryption key in Cloud KMS. It is safe for concurrent use;
// Close releases its connection.
type KEK struct {
	id      string
	keyName string
	timeout time.Duration
	client  *kms.KeyManagementClient
}

// New creates the client. It finds application default credentials (and
// fails when there are none) but does not call Cloud KMS.
func New(ctx context.Context, cfg Config) (*KEK, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	var opts []option.ClientOption
	if cfg.Endpoint != "" {
		opts = append(opts, option.WithEndpoint(cfg.Endpoint))
	}
	opts = append(opts, cfg.ClientOptions...)
	client, err := kms.NewKeyManagementClient(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("gcpkms: create client: %w", err)
	}
	return &KEK{id: cfg.ID, keyName: cfg.KeyName, timeout: cfg.Timeout, client: client}, nil
}

// Close closes the client's connection.
func (k *KEK) Close() error { return k.client.Close() }

// ID returns the KEK id.
func (k *KEK) ID() string { return k.id }

// Wrap encrypts plaintext under the key's primary version with the
// binding as additional authenticated data. Errors are classified as in
// package kek; a persistent checksum failure is unavailable and wraps
// ErrIntegrity.
func (k *KEK) Wrap(ctx context.Context, plaintext []byte, b map[string]string) ([]byte, error) {
	callCtx, cancel := context.WithTimeout(ctx, k.timeout)
	defer cancel()
	aad := binding.AAD(b)
	req := &kmspb.EncryptRequest{
		Name:                              k.keyName,
		Plaintext:                         plaintext,
		PlaintextCrc32C:                   wrapperspb.Int64(crc32c(plaintext)),
		AdditionalAuthenticatedData:       aad,
		AdditionalAuthenticatedDataCrc32C: wrapperspb.Int64(crc32c(aad)),
	}
	var integrityErr error
	for range integrityAttempts {
		resp, err := k.client.Encrypt(callCtx, req)
		if err != nil {
			return nil, k.fail(ctx, "encrypt", err)
		}
		if !strings.HasPrefix(resp.GetName(), k.keyName+"/cryptoKeyVersions/") {
			return nil, fmt.Errorf("gcpkms: encrypt: Cloud KMS used %q, not a version of %s", resp.GetName(), k.keyName)
		}
		integrityErr = checkEncryptResponse(resp)
		if integrityErr == nil {
			return resp.GetCiphertext(), nil
		}
	}
	return nil, fmt.Errorf("gcpkms: encrypt: %w", kek.Unavailable(integrityErr))
}

func checkEncryptResponse(resp *kmspb.EncryptResponse) error {
	switch {
	case !resp.GetVerifiedPlaintextCrc32C():
		return fmt.Errorf("%w: verified_plaintext_crc32c is false", ErrIntegrity)
	case !resp.GetVerifiedAdditionalAuthenticatedDataCrc32C():
		return fmt.Errorf("%w: verified_additional_authenticated_data_crc32c is false", ErrIntegrity)
	case resp.GetCiphertextCrc32C() == nil:
		return fmt.Errorf("%w: no ciphertext_crc32c", ErrIntegrity)
	case resp.GetCiphertextCrc32C().GetValue() != crc32c(resp.GetCiphertext()):
		return fmt.Errorf("%w: ciphertext_crc32c does not match the ciphertext", ErrIntegrity)
	}
	return nil
}

// Unwrap decrypts ciphertext with the binding as additional authenticated
// data. A ciphertext that does not open (Cloud KMS answers
// InvalidArgument) is kek.ErrInvalidCiphertext.
func (k *KEK) Unwrap(ctx context.Context, ciphertext []byte, b map[string]string) ([]byte, error) {
	if len(ciphertext) == 0 {
		return nil, fmt.Errorf("gcpkms: decrypt: %w: empty", kek.ErrInvalidCiphertext)
	}
	callCtx, cancel := context.WithTimeout(ctx, k.timeout)
	defer cancel()
	aad := binding.AAD(b)
	req := &kmspb.DecryptRequest{
		Name:                              k.keyName,
		Ciphertext:                        ciphertext,
		CiphertextCrc32C:                  wrapperspb.Int64(crc32c(ciphertext)),
		AdditionalAuthenticatedData:       aad,
		AdditionalAuthenticatedDataCrc32C: wrapperspb.Int64(crc32c(aad)),
	}
	var integrityErr error
	for range integrityAttempts {
		resp, err := k.client.Decrypt(callCtx, req)
		if err != nil {
			return nil, k.fail(ctx, "decrypt", err)
		}
		plaintext := resp.GetPlaintext()
		switch {
		case resp.GetPlaintextCrc32C() == nil:
			integrityErr = fmt.Errorf("%w: no plaintext_crc32c", ErrIntegrity)
		case resp.GetPlaintextCrc32C().GetValue() != crc32c(plaintext):
			integrityErr = fmt.Errorf("%w: plaintext_crc32c does not match the plaintext", ErrIntegrity)
		default:
			return plaintext, nil
		}
		clear(plaintext)
	}
	return nil, fmt.Errorf("gcpkms: decrypt: %w", kek.Unavailable(integrityErr))
}

// Status reads the key (cloudkms.cryptoKeys.get, which the
// encrypter/decrypter role does not grant: add roles/cloudkms.viewer on
// the key) and reports an error unless it is an ENCRYPT_DECRYPT key with
// an enabled primary version.
func (k *KEK) Status(ctx context.Context) error {
	callCtx, cancel := context.WithTimeout(ctx, k.timeout)
	defer cancel()
	key, err := k.client.GetCryptoKey(callCtx, &kmspb.GetCryptoKeyRequest{Name: k.keyName})
	if err != nil {
		return k.fail(ctx, "get crypto key", err)
	}
	switch {
	case key.GetPurpose() != kmspb.CryptoKey_ENCRYPT_DECRYPT:
		return fmt.Errorf("gcpkms: key %s: %w", k.keyName, kek.Denied(fmt.Errorf("purpose is %s, want ENCRYPT_DECRYPT", key.GetPurpose())))
	case key.GetPrimary() == nil:
		return fmt.Errorf("gcpkms: key %s: %w", k.keyName, kek.Denied(errors.New("no primary version")))
	case key.GetPrimary().GetState() != kmspb.CryptoKeyVersion_ENABLED:
		return fmt.Errorf("gcpkms: key %s: %w", k.keyName, kek.Denied(fmt.Errorf("primary version %s is %s", key.GetPrimary().GetName(), key.GetPrimary().GetState())))
	}
	return nil
}

// fail prefixes and classifies a client error. When the caller's ctx is
// done the error says so (errors.Is finds its ctx error).
func (k *KEK) fail(ctx context.Context, op string, err error) error {
	if ctxErr := ctx.Err(); ctxErr != nil {
		return fmt.Errorf("gcpkms: %s: %w", op, kek.Unavailable(fmt.Errorf("%w: %w", ctxErr, err)))
	}
	if errors.Is(err, context.DeadlineExceeded) {
		// Our per-call timeout, not the caller's deadline, ran out.
		return fmt.Errorf("gcpkms: %s: %w", op, kek.Unavailable(fmt.Errorf("no answer within %s: %w", k.timeout, err)))
	}
	return fmt.Errorf("gcpkms: %s: %w", op, classify(op, err))
}

// classify translates a gRPC status into a kek error class, once, by code.
func classify(op string, err error) error {
	st, ok := status.FromError(err)
	if !ok {
		return kek.Unavailable(err) // no answer: dialling, credentials
	}
	switch st.Code() {
	case codes.InvalidArgument:
		if op == "decrypt" {
			// Cloud KMS says "Decryption failed: the ciphertext is
			// invalid." for a wrong AAD, another key's ciphertext or
			// corrupt bytes alike.
			return fmt.Errorf("%w: %w", kek.ErrInvalidCiphertext, err)
		}
		return err
	case codes.PermissionDenied, codes.Unauthenticated, codes.NotFound, codes.FailedPrecondition:
		return kek.Denied(err)
	case codes.Unavailable, codes.DeadlineExceeded, codes.ResourceExhausted, codes.Aborted,
		codes.Internal, codes.Unknown, codes.Canceled:
		return kek.Unavailable(err)
	}
	return err
}
