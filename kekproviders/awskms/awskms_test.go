package awskms_test

import (
	"crypto/rand"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/kms"
	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/internal/testkit/kmstest/localkms"
	"github.com/keybroker/keybroker/kek"
	"github.com/keybroker/keybroker/kekproviders"
	"github.com/keybroker/keybroker/kekproviders/awskms"
	"github.com/keybroker/keybroker/kekproviders/kektest"
)

// newKEK opens a KEK on srvURL with static credentials, so the default
// chain never reaches for an instance metadata endpoint.
func newKEK(t *testing.T, endpoint, keyID, id string, tweak ...func(*awskms.Config)) *awskms.KEK {
	t.Helper()
	cfg := awskms.Config{
		ID:          id,
		KeyID:       keyID,
		Region:      localkms.Region,
		Endpoint:    endpoint,
		Credentials: localkms.Credentials(),
		Timeout:     10 * time.Second,
	}
	for _, f := range tweak {
		f(&cfg)
	}
	kek, err := awskms.New(t.Context(), cfg)
	require.NoError(t, err)
	return kek
}

func oneAttempt(c *awskms.Config) { c.MaxAttempts = 1 }

func TestConformance(t *testing.T) {
	t.Parallel()
	srv := localkms.Start(t)
	kektest.Run(t, func(t *testing.T) kektest.Subject {
		main := srv.CreateKey(t, "keybroker")
		other := srv.CreateKey(t, "")
		return kektest.Subject{
			KEK:   newKEK(t, srv.URL, main.Alias, "aws-1"),
			Other: newKEK(t, srv.URL, other.ARN, "aws-2"),
			Outage: func(t *testing.T) (kek.KEK, func()) {
				own := localkms.Start(t)
				key := own.CreateKey(t, "")
				return newKEK(t, own.URL, key.ID, "aws-outage", oneAttempt), own.Close
			},
			Deny: func(t *testing.T) (kek.KEK, func()) {
				key := srv.CreateKey(t, "")
				return newKEK(t, srv.URL, key.ID, "aws-denied"), func() { srv.DisableKey(t, key.ID) }
			},
			Stalled: func(t *testing.T, addr string, timeout time.Duration) kek.KEK {
				// The SDK's default retryer stays on: the per-call
				// timeout must bound all attempts together.
				return newKEK(t, "http://"+addr, "alias/keybroker", "aws-stalled", func(c *awskms.Config) { c.Timeout = timeout })
			},
		}
	})
}

func TestKeyNamedEveryWay(t *testing.T) {
	t.Parallel()
	srv := localkms.Start(t)
	key := srv.CreateKey(t, "named")
	ctx := kektest.Context(t, 30*time.Second)
	binding := kektest.Binding("alice", "aws-1")
	plaintext := make([]byte, 32)
	rand.Read(plaintext)

	byAlias := newKEK(t, srv.URL, key.Alias, "aws-1")
	wrapped, err := byAlias.Wrap(ctx, plaintext, binding)
	require.NoError(t, err)

	aliasARN := "arn:aws:kms:" + localkms.Region + ":" + localkms.AccountID + ":" + key.Alias
	for name, keyID := range map[string]string{"KeyID": key.ID, "KeyARN": key.ARN, "AliasARN": aliasARN} {
		t.Run(name, func(t *testing.T) {
			back, err := newKEK(t, srv.URL, keyID, "aws-1").Unwrap(ctx, wrapped, binding)
			require.NoError(t, err)
			require.Equal(t, plaintext, back)
		})
	}
}

// The binding must travel as the EncryptionContext itself, not as an
// encoding of it: IAM conditions (kms:EncryptionContext:user_id) and
// CloudTrail read it there.
func TestBindingIsTheEncryptionContext(t *testing.T) {
	t.Parallel()
	srv := localkms.Start(t)
	key := srv.CreateKey(t, "")
	ctx := kektest.Context(t, 30*time.Second)
	binding := kektest.Binding("alice", "aws-1")
	plaintext := []byte("0123456789abcdef0123456789abcdef")

	wrapped, err := newKEK(t, srv.URL, key.ID, "aws-1").Wrap(ctx, plaintext, binding)
	require.NoError(t, err)
	out, err := srv.Client().Decrypt(ctx, &kms.DecryptInput{
		CiphertextBlob:    wrapped,
		KeyId:             aws.String(key.ID),
		EncryptionContext: map[string]string{"user_id": "alice", "kek_id": "aws-1", "format": "2"},
	})
	require.NoError(t, err)
	require.Equal(t, plaintext, out.Plaintext)
}

// TestKeyRotationNeedsNoRewrap: AWS keeps every backing key of a rotated
// KMS key and decrypts with the one that made a ciphertext, which no
// ciphertext names to the caller. An AWS KEK so offers the re-wrap job no
// key version to sweep, and no Rewrap: rows stay as they are, and keep
// opening (broker.TestKeyVersionRotationPerProvider runs the job).
// local-kms cannot rotate a key (RotateKeyOnDemand answers 501).
func TestKeyRotationNeedsNoRewrap(t *testing.T) {
	t.Parallel()
	srv := localkms.Start(t)
	var k kek.KEK = newKEK(t, srv.URL, srv.CreateKey(t, "").ARN, "aws-1")
	_, versions := k.(kek.Versioner)
	_, rewraps := k.(kek.Rewrapper)
	require.False(t, versions, "an AWS ciphertext names no backing key version")
	require.False(t, rewraps, "nothing would call Rewrap")
}

func TestRegionFromKeyARN(t *testing.T) {
	// No t.Parallel: t.Setenv clears the region the default chain would
	// otherwise find on this machine.
	t.Setenv("AWS_REGION", "")
	t.Setenv("AWS_DEFAULT_REGION", "")
	t.Setenv("AWS_CONFIG_FILE", t.TempDir()+"/absent")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", t.TempDir()+"/absent")
	srv := localkms.Start(t)
	key := srv.CreateKey(t, "")

	_, err := awskms.New(t.Context(), awskms.Config{ID: "aws-1", KeyID: "alias/keybroker", Endpoint: srv.URL, Credentials: localkms.Credentials()})
	require.ErrorContains(t, err, "no AWS region")

	kek := newKEK(t, srv.URL, key.ARN, "aws-1", func(c *awskms.Config) { c.Region = "" })
	res := kekproviders.Check(kektest.Context(t, 30*time.Second), kek, nil)
	require.NoError(t, res.Err())
}

func TestConfigValidation(t *testing.T) {
	t.Parallel()
	for name, cfg := range map[string]awskms.Config{
		"NoID":            {KeyID: "alias/x", Region: "eu-central-1"},
		"NoKey":           {ID: "aws-1", Region: "eu-central-1"},
		"NegativeTimeout": {ID: "aws-1", KeyID: "alias/x", Region: "eu-central-1", Timeout: -time.Second},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := awskms.New(t.Context(), cfg)
			require.ErrorContains(t, err, "Config.")
		})
	}
}
