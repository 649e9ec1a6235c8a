package gcpkms_test

import (
	"testing"
	"time"

	kms "cloud.google.com/go/kms/apiv1"
	"cloud.google.com/go/kms/apiv1/kmspb"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/keybroker/keybroker/internal/testkit/kmstest/fakegcpkms"
	"github.com/keybroker/keybroker/kek"
	"github.com/keybroker/keybroker/kekproviders/gcpkms"
	"github.com/keybroker/keybroker/kekproviders/kektest"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// noADC makes a test that forgot WithoutAuthentication fail at once
// instead of probing for credentials (and the metadata server).
func noADC(t *testing.T) {
	t.Setenv("GOOGLE_APPLICATION_CREDENTIALS", t.TempDir()+"/absent.json")
}

func newKEK(t *testing.T, opts []option.ClientOption, keyName, id string, tweak ...func(*gcpkms.Config)) *gcpkms.KEK {
	t.Helper()
	cfg := gcpkms.Config{ID: id, KeyName: keyName, Timeout: 10 * time.Second, ClientOptions: opts}
	for _, f := range tweak {
		f(&cfg)
	}
	kek, err := gcpkms.New(kektest.Context(t, 10*time.Second), cfg)
	require.NoError(t, err)
	t.Cleanup(func() { kek.Close() })
	return kek
}

// insecureAt points the client at addr without TLS or credentials.
func insecureAt(addr string) []option.ClientOption {
	return []option.ClientOption{
		option.WithEndpoint(addr),
		option.WithoutAuthentication(),
		option.WithGRPCDialOption(grpc.WithTransportCredentials(insecure.NewCredentials())),
	}
}

func TestConformance(t *testing.T) {
	noADC(t)
	srv := fakegcpkms.Start(t)
	kektest.Run(t, func(t *testing.T) kektest.Subject {
		main := srv.CreateKey(t, "keybroker")
		other := srv.CreateKey(t, "other")
		return kektest.Subject{
			KEK:   newKEK(t, srv.ClientOptions(), main, "gcp-1"),
			Other: newKEK(t, srv.ClientOptions(), other, "gcp-2"),
			Outage: func(t *testing.T) (kek.KEK, func()) {
				own := fakegcpkms.Start(t)
				key := own.CreateKey(t, "outage")
				// The library retries Unavailable until the deadline;
				// a short timeout keeps the test quick.
				return newKEK(t, own.ClientOptions(), key, "gcp-outage", func(c *gcpkms.Config) { c.Timeout = time.Second }), own.Stop
			},
			Deny: func(t *testing.T) (kek.KEK, func()) {
				key := srv.CreateKey(t, "denied")
				return newKEK(t, srv.ClientOptions(), key, "gcp-denied"), func() { srv.Deny(t, key) }
			},
			Stalled: func(t *testing.T, addr string, timeout time.Duration) kek.KEK {
				return newKEK(t, insecureAt(addr), fakegcpkms.KeyRing+"/cryptoKeys/stalled", "gcp-stalled", func(c *gcpkms.Config) { c.Timeout = timeout })
			},
			Rotate: func(t *testing.T) { srv.Rotate(t, main) },
		}
	})
}

// TestDisabledVersionIsDenied: a wrap made by a disabled key version is
// a refusal, not bad data: re-enabling the version brings the row back.
// (The conformance suite's KeyRotation checks that old wraps open after a
// new primary version.)
func TestDisabledVersionIsDenied(t *testing.T) {
	noADC(t)
	srv := fakegcpkms.Start(t)
	name := srv.CreateKey(t, "rotating")
	k := newKEK(t, srv.ClientOptions(), name, "gcp-1")
	ctx := kektest.Context(t, 30*time.Second)
	b := kektest.Binding("alice", "gcp-1")
	old, err := k.Wrap(ctx, make([]byte, 32), b)
	require.NoError(t, err)
	srv.Rotate(t, name)

	srv.DisableVersion(t, name, 1)
	_, err = k.Unwrap(ctx, old, b)
	kektest.RequireDenied(t, err)
	require.NoError(t, k.Status(ctx), "the primary (version 2) is still enabled")
	srv.DisableVersion(t, name, 2)
	kektest.RequireDenied(t, k.Status(ctx))
}

// The client library does not check integrity; these faults prove the
// provider does, on every field, and gives up as "unavailable" (the stored
// data is not at fault) after a few attempts.
func TestIntegrityChecks(t *testing.T) {
	noADC(t)
	srv := fakegcpkms.Start(t)
	name := srv.CreateKey(t, "integrity")
	kek := newKEK(t, srv.ClientOptions(), name, "gcp-1")
	ctx := kektest.Context(t, 30*time.Second)
	b := kektest.Binding("alice", "gcp-1")
	wrapped, err := kek.Wrap(ctx, make([]byte, 32), b)
	require.NoError(t, err)

	for name, tc := range map[string]struct {
		faults       fakegcpkms.Faults
		decryptFails bool
	}{
		"VerifiedFlagsMissing": {fakegcpkms.Faults{DropVerified: true}, false},
		"ResponseCorrupted":    {fakegcpkms.Faults{CorruptResponse: true}, true},
		"ResponseChecksumGone": {fakegcpkms.Faults{OmitResponseChecksum: true}, true},
	} {
		t.Run(name, func(t *testing.T) {
			srv.SetFaults(tc.faults)
			defer srv.SetFaults(fakegcpkms.Faults{})
			before := srv.Calls("Encrypt")
			_, err := kek.Wrap(ctx, make([]byte, 32), b)
			kektest.RequireUnavailable(t, err)
			require.ErrorIs(t, err, gcpkms.ErrIntegrity)
			require.Equal(t, 3, srv.Calls("Encrypt")-before, "a bad answer is retried a limited number of times")

			plaintext, err := kek.Unwrap(ctx, wrapped, b)
			if !tc.decryptFails {
				require.NoError(t, err) // Decrypt answers carry no Verified* flags
				return
			}
			require.Nil(t, plaintext)
			kektest.RequireUnavailable(t, err)
			require.ErrorIs(t, err, gcpkms.ErrIntegrity)
		})
	}
}

// The fake refuses requests without checksum fields (Cloud KMS would
// accept them), so every passing test above proves the provider sends
// them. This shows the refusal is real.
func TestFakeRefusesRequestsWithoutChecksums(t *testing.T) {
	noADC(t)
	srv := fakegcpkms.Start(t)
	name := srv.CreateKey(t, "strict")
	ctx := kektest.Context(t, 30*time.Second)
	client, err := kms.NewKeyManagementClient(ctx, srv.ClientOptions()...)
	require.NoError(t, err)
	defer client.Close()
	_, err = client.Encrypt(ctx, &kmspb.EncryptRequest{Name: name, Plaintext: []byte("x")})
	require.Equal(t, codes.InvalidArgument, status.Code(err))

	_, err = client.Encrypt(ctx, &kmspb.EncryptRequest{
		Name: name, Plaintext: []byte("x"),
		PlaintextCrc32C:                   wrapperspb.Int64(fakegcpkms.CRC32C([]byte("y"))),
		AdditionalAuthenticatedDataCrc32C: wrapperspb.Int64(0),
	})
	require.Equal(t, codes.InvalidArgument, status.Code(err))
	require.Contains(t, status.Convert(err).Message(), "The checksum in field plaintext_crc32c did not match the data in field plaintext.")
}

func TestKeyNameValidation(t *testing.T) {
	t.Parallel()
	for name, keyName := range map[string]string{
		"Empty":     "",
		"Version":   fakegcpkms.KeyRing + "/cryptoKeys/k/cryptoKeyVersions/1",
		"KeyRing":   fakegcpkms.KeyRing,
		"Malformed": "projects/p/keys/k",
	} {
		t.Run(name, func(t *testing.T) {
			_, err := gcpkms.New(t.Context(), gcpkms.Config{ID: "gcp-1", KeyName: keyName, ClientOptions: insecureAt("127.0.0.1:1")})
			require.ErrorContains(t, err, "Config.KeyName")
		})
	}
}

func TestMissingKeyIsDenied(t *testing.T) {
	noADC(t)
	srv := fakegcpkms.Start(t)
	kek := newKEK(t, srv.ClientOptions(), fakegcpkms.KeyRing+"/cryptoKeys/absent", "gcp-1")
	ctx := kektest.Context(t, 30*time.Second)
	_, err := kek.Wrap(ctx, make([]byte, 32), nil)
	kektest.RequireDenied(t, err)
	kektest.RequireDenied(t, kek.Status(ctx))
}
