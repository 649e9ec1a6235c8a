// Package awskms is a KEK held in AWS KMS: a symmetric encryption key
// (SYMMETRIC_DEFAULT) that never leaves the service. Wrap is KMS Encrypt,
// Unwrap is KMS Decrypt, and the binding map is sent as the
// EncryptionContext, so a wrap opens only with the same user id, KEK id
// and format — and IAM policies can require those keys
// (kms:EncryptionContextKeys, kms:EncryptionContext:user_id).
//
// Credentials come from the SDK's default chain (environment, shared
// config and SSO, web identity/IRSA, ECS and EC2 instance roles). Calls are
// retried by the SDK's standard retryer (exponential backoff with jitter);
// each Wrap, Unwrap or Status is bounded by a per-call timeout that covers
// all its attempts.
//
// At most Config.MaxInFlight Encrypt and Decrypt calls of one
// KEK are in flight at once, over as many HTTP connections open at once at
// most (counted from a dial until its Close has returned); further
// callers wait for a slot within their timeout and their context's
// deadline. In direct mode (cache=off) every key fetch is a Decrypt, and an
// unbounded login storm would hold one SDK call and one connection per
// waiting client while the KMS, the bottleneck anyway, works through them.
package awskms

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/aws/aws-sdk-go-v2/service/kms/types"
	"github.com/aws/smithy-go"

	"github.com/keybroker/keybroker/kek"
	"github.com/keybroker/keybroker/kekproviders/internal/inflight"
)

// DefaultTimeout bounds one call, retries included, when Config.Timeout is
// zero.
const DefaultTimeout = 10 * time.Second

// Config selects the key and how to reach it.
type Config struct {
	// ID is the KEK id recorded on every row it wraps.
	ID string
	// KeyID names the KMS key: a key ARN, a key id, an alias name
	// ("alias/keybroker") or an alias ARN.
	KeyID string
	// Region is the AWS region; empty means the default chain's
	// (AWS_REGION, the shared config) or, failing that, the region of a
	// key ARN.
	Region string
	// Profile is a shared-config profile; empty means the default chain's.
	Profile string
	// Endpoint overrides the KMS endpoint (a VPC endpoint, or local-kms
	// in tests); empty means the SDK's endpoint for the region.
	Endpoint string
	// Timeout bounds each call, retries included; zero means
	// DefaultTimeout.
	Timeout time.Duration
	// MaxAttempts is the standard retryer's attempt limit (first try
	// included); zero keeps the SDK default (3).
	MaxAttempts int
	// MaxInFlight bounds the Encrypt and Decrypt calls in
	// flight at once, and the HTTP connections to the KMS endpoint; zero
	// means DefaultMaxInFlight. Status probes are not counted, so that
	// readiness reports the KMS itself, not this queue.
	MaxInFlight int
	// Credentials replaces the default credential chain when set.
	Credentials aws.CredentialsProvider

	// dial replaces the transport's dialer (tests count connections
	// with it).
	dial inflight.DialFunc
}

// DefaultMaxInFlight bounds the KMS calls of one KEK in flight at once
// when Config.MaxInFlight is zero.
const DefaultMaxInFlight = inflight.Default

func (c *Config) validate() error {
	if c.ID == "" {
		return errors.New("awskms: Config.ID is empty")
	}
	if c.KeyID == "" {
		return errors.New("awskms: Config.KeyID is empty: give a key ARN, key id or alias/NAME")
	}
	if c.Timeout < 0 {
		return fmt.Errorf("awskms: Config.Timeout is negative (%s)", c.Timeout)
	}
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.MaxAttempts < 0 {
		return fmt.Errorf("awskms: Config.MaxAttempts is negative (%d)", c.MaxAttempts)
	}
	if c.MaxInFlight < 0 {
		return fmt.Errorf("awskms: Config.MaxInFlight is negative (%d)", c.MaxInFlight)
	}
	if c.MaxInFlight == 0 {
		c.MaxInFlight = DefaultMaxInFlight
	}
	return nil
}

// The abilities an AWS KMS KEK claims. It has no Rewrapper: AWS keeps
// every backing key of a rotated KMS key and decrypts with the one that
// made the ciphertext, which no ciphertext names to the caller, so there
// is nothing to sweep (docs/rotation.md).
var (
	_ kek.KEK           = (*KEK)(nil)
	_ kek.StatusChecker = (*KEK)(nil)
)

// KEK is a key-encryption key in AWS KMS. It is safe for concurrent use.
type KEK struct {
	id      string
	keyID   string
	timeout time.Duration
	client  *kms.Client
	calls   *inflight.Limiter
}

// New loads the AWS configuration (no network call: credentials are
// resolved on first use) and returns the KEK. It fails when no region can
// be determined or the configuration is invalid.
func New(ctx context.Context, cfg Config) (*KEK, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	// The SDK's default transport keeps 10 idle connections per host and
	// opens as many as there are calls: with more calls in flight than
	// that, connections are opened and closed all the time. Keep exactly
	// as many as calls may be in flight, and never more: MaxConnsPerHost
	// stops the transport from dialling past the bound, and the ConnCap
	// holds a dial back until the connection it replaces has closed.
	conns := inflight.NewConnCap(cfg.MaxInFlight)
	httpClient := awshttp.NewBuildableClient().WithTransportOptions(func(tr *http.Transport) {
		tr.MaxConnsPerHost = cfg.MaxInFlight
		tr.MaxIdleConnsPerHost = cfg.MaxInFlight
		dial := cfg.dial
		if dial == nil {
			dial = tr.DialContext
		}
		if dial == nil {
			dial = (&net.Dialer{}).DialContext
		}
		tr.DialContext = conns.Dial(dial)
	})
	opts := []func(*config.LoadOptions) error{config.WithHTTPClient(httpClient)}
	if cfg.Region != "" {
		opts = append(opts, config.WithRegion(cfg.Region))
	}
	if cfg.Profile != "" {
		opts = append(opts, config.WithSharedConfigProfile(cfg.Profile))
	}
	if cfg.Credentials != nil {
		opts = append(opts, config.WithCredentialsProvider(cfg.Credentials))
	}
	if cfg.MaxAttempts > 0 {
		opts = append(opts, config.WithRetryer(func() aws.Retryer {
			return retry.NewStandard(func(o *retry.StandardOptions) { o.MaxAttempts = cfg.MaxAttempts })
		}))
	}
	awsCfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("awskms: load AWS configuration: %w", err)
	}
	if awsCfg.Region == "" {
		awsCfg.Region = regionOfARN(cfg.KeyID)
	}
	if awsCfg.Region == "" {
		return nil, errors.New("awskms: no AWS region: add ?region= to the URI, set AWS_REGION, or name the key by ARN")
	}
	client := kms.NewFromConfig(awsCfg, func(o *kms.Options) {
		if cfg.Endpoint != "" {
			o.BaseEndpoint = aws.String(cfg.Endpoint)
		}
	})
	return &KEK{id: cfg.ID, keyID: cfg.KeyID, timeout: cfg.Timeout, client: client, calls: inflight.New(cfg.MaxInFlight)}, nil
}

// regionOfARN returns the region of arn:aws:kms:REGION:ACCOUNT:…, or "".
func regionOfARN(keyID string) string {
	parts := strings.SplitN(keyID, ":", 6)
	if len(parts) == 6 && parts[0] == "arn" && parts[2] == "kms" {
		return parts[3]
	}
	return ""
}

// ID returns the KEK id.
func (k *KEK) ID() string { return k.id }

// Wrap encrypts plaintext under the key with binding as the encryption
// context. Errors are classified as in package kek (see kek.Classify).
func (k *KEK) Wrap(ctx context.Context, plaintext []byte, binding map[string]string) ([]byte, error) {
	out, err := call(ctx, k, "encrypt", func(callCtx context.Context) (*kms.EncryptOutput, error) {
		return k.client.Encrypt(callCtx, &kms.EncryptInput{
			KeyId:             aws.String(k.keyID),
			Plaintext:         plaintext,
			EncryptionContext: encryptionContext(binding),
		})
	})
	if err != nil {
		return nil, err
	}
	return out.CiphertextBlob, nil
}

// Unwrap decrypts ciphertext with binding as the encryption context. The
// key is pinned (KeyId is sent), so a ciphertext of another key is
// refused rather than decrypted under whatever key it names. A ciphertext
// that does not open is kek.ErrInvalidCiphertext.
func (k *KEK) Unwrap(ctx context.Context, ciphertext []byte, binding map[string]string) ([]byte, error) {
	if len(ciphertext) == 0 {
		return nil, fmt.Errorf("awskms: decrypt: %w: empty", kek.ErrInvalidCiphertext)
	}
	out, err := call(ctx, k, "decrypt", func(callCtx context.Context) (*kms.DecryptOutput, error) {
		return k.client.Decrypt(callCtx, &kms.DecryptInput{
			KeyId:             aws.String(k.keyID),
			CiphertextBlob:    ciphertext,
			EncryptionContext: encryptionContext(binding),
		})
	})
	if err != nil {
		return nil, err
	}
	return out.Plaintext, nil
}

// Status describes the key (kms:DescribeKey) and reports an error unless
// it is an enabled symmetric encryption key: a disabled or deleted key is
// denied, a key in an unreachable custom key store unavailable.
func (k *KEK) Status(ctx context.Context) error {
	callCtx, cancel := context.WithTimeout(ctx, k.timeout)
	defer cancel()
	out, err := k.client.DescribeKey(callCtx, &kms.DescribeKeyInput{KeyId: aws.String(k.keyID)})
	if err != nil {
		return k.fail(ctx, "describe key", err)
	}
	md := out.KeyMetadata
	if md == nil {
		return kek.Unavailable(errors.New("awskms: describe key: no key metadata in the answer"))
	}
	switch md.KeyState {
	case types.KeyStateEnabled:
	case types.KeyStateUnavailable, types.KeyStateCreating, types.KeyStateUpdating:
		return fmt.Errorf("awskms: key %s: %w", k.keyID, kek.Unavailable(fmt.Errorf("key state is %s", md.KeyState)))
	default:
		return fmt.Errorf("awskms: key %s: %w", k.keyID, kek.Denied(fmt.Errorf("key state is %s", md.KeyState)))
	}
	if md.KeyUsage != "" && md.KeyUsage != types.KeyUsageTypeEncryptDecrypt {
		return fmt.Errorf("awskms: key %s: %w", k.keyID, kek.Denied(fmt.Errorf("key usage is %s, want ENCRYPT_DECRYPT", md.KeyUsage)))
	}
	if md.KeySpec != "" && md.KeySpec != types.KeySpecSymmetricDefault {
		return fmt.Errorf("awskms: key %s: %w", k.keyID, kek.Denied(fmt.Errorf("key spec is %s, want SYMMETRIC_DEFAULT", md.KeySpec)))
	}
	return nil
}

// encryptionContext is the binding as KMS takes it: a copy, and nil for an
// empty binding (KMS treats a missing and an empty context alike).
func encryptionContext(binding map[string]string) map[string]string {
	if len(binding) == 0 {
		return nil
	}
	return maps.Clone(binding)
}

// fail prefixes and classifies an SDK error. When the caller's ctx is done
// the error says so (errors.Is finds its ctx error) whatever the SDK made
// of it.
// call runs one KMS key operation within the KEK's bound on calls in
// flight and its timeout, and classifies a failure (or a wait for a free
// slot that ctx ended) as fail does.
func call[T any](ctx context.Context, k *KEK, op string, fn func(callCtx context.Context) (T, error)) (T, error) {
	callCtx, cancel := context.WithTimeout(ctx, k.timeout)
	defer cancel()
	var out T
	var err error
	if waitErr := k.calls.Do(callCtx, func() { out, err = fn(callCtx) }); waitErr != nil {
		err = waitErr
	}
	if err != nil {
		var zero T
		return zero, k.fail(ctx, op, err)
	}
	return out, nil
}

func (k *KEK) fail(ctx context.Context, op string, err error) error {
	if ctxErr := ctx.Err(); ctxErr != nil {
		return fmt.Errorf("awskms: %s: %w", op, kek.Unavailable(fmt.Errorf("%w: %w", ctxErr, err)))
	}
	if errors.Is(err, context.DeadlineExceeded) {
		// Our per-call timeout, not the caller's deadline, ran out.
		return fmt.Errorf("awskms: %s: %w", op, kek.Unavailable(fmt.Errorf("no answer within %s: %w", k.timeout, err)))
	}
	return fmt.Errorf("awskms: %s: %w", op, classify(err))
}

// classify translates an SDK error into a kek error class, once, by the
// service's error code (never its message).
func classify(err error) error {
	var invalidParams smithy.InvalidParamsError
	if errors.As(err, &invalidParams) {
		// The SDK refused the request before sending it: a bug here.
		return err
	}
	var apiErr smithy.APIError
	if !errors.As(err, &apiErr) {
		// No answer from KMS: connection refused, DNS, our own per-call
		// timeout, or no credentials could be fetched (IMDS unreachable).
		return kek.Unavailable(err)
	}
	switch apiErr.ErrorCode() {
	case "InvalidCiphertextException", "IncorrectKeyException":
		return fmt.Errorf("%w: %w", kek.ErrInvalidCiphertext, err)
	case "AccessDeniedException", "DisabledException", "KMSInvalidStateException", "NotFoundException",
		"InvalidKeyUsageException", "InvalidGrantTokenException", "UnrecognizedClientException",
		"InvalidSignatureException", "IncompleteSignature", "ExpiredTokenException",
		"InvalidClientTokenId", "MissingAuthenticationToken", "SignatureDoesNotMatch":
		return kek.Denied(err)
	case "KMSInternalException", "DependencyTimeoutException", "KeyUnavailableException",
		"ThrottlingException", "LimitExceededException", "RequestLimitExceeded",
		"ServiceUnavailable", "ServiceUnavailableException", "InternalFailure", "RequestTimeout",
		"RequestTimeoutException":
		return kek.Unavailable(err)
	}
	var respErr *awshttp.ResponseError
	if apiErr.ErrorFault() == smithy.FaultServer || (errors.As(err, &respErr) && respErr.HTTPStatusCode() >= 500) {
		return kek.Unavailable(err)
	}
	// A client-side fault with no class (a validation error): a bug or a
	// misconfiguration, reported as it is.
	return err
}
