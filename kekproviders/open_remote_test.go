package kekproviders_test

import (
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/keybroker/keybroker/internal/testkit/kmstest/fakegcpkms"
	"github.com/keybroker/keybroker/internal/testkit/kmstest/faketransit"
	"github.com/keybroker/keybroker/internal/testkit/kmstest/localkms"
	"github.com/keybroker/keybroker/kek"
	"github.com/keybroker/keybroker/kekproviders"
)

// TestOpenAWSKMS goes through the URI and the SDK's default credential
// chain, fed from the environment as on a server with env credentials.
func TestOpenAWSKMS(t *testing.T) {
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDFROMENV")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "secret-from-env")
	t.Setenv("AWS_SESSION_TOKEN", "")
	t.Setenv("AWS_PROFILE", "")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true") // a mistake fails at once, never reaching for 169.254.169.254
	t.Setenv("AWS_CONFIG_FILE", t.TempDir()+"/absent")
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", t.TempDir()+"/absent")
	srv := localkms.Start(t)
	key := srv.CreateKey(t, "keybroker")

	for _, uri := range []string{
		"awskms:///alias/keybroker?region=" + localkms.Region + "&endpoint=" + srv.URL + "&id=aws-1",
		"awskms://alias/keybroker?region=" + localkms.Region + "&endpoint=" + srv.URL + "&id=aws-1&timeout=5s&max_attempts=2&max_inflight=4",
		"awskms:///" + key.ARN + "?endpoint=" + srv.URL + "&id=aws-1",
	} {
		kek, err := kekproviders.Open(t.Context(), uri)
		require.NoError(t, err, uri)
		roundTrip(t, kek, "aws-1", false)
	}

	_, err := kekproviders.Open(t.Context(), "awskms:///alias/keybroker?regoin=eu-central-1&id=aws-1")
	require.ErrorContains(t, err, "regoin")
	_, err = kekproviders.Open(t.Context(), "awskms:///alias/keybroker?region=eu-central-1&timeout=forever&id=aws-1")
	require.ErrorContains(t, err, "timeout")
	for _, bad := range []string{"0", "-1", "many"} {
		_, err = kekproviders.Open(t.Context(), "awskms:///alias/keybroker?region=eu-central-1&id=aws-1&max_inflight="+bad)
		require.ErrorContains(t, err, "max_inflight", bad)
	}
}

func TestOpenGCPKMS(t *testing.T) {
	t.Setenv("GOOGLE_APPLICATION_CREDENTIALS", t.TempDir()+"/absent.json")
	srv := fakegcpkms.Start(t)
	name := srv.CreateKey(t, "keybroker")
	opener := kekproviders.Opener{GCPClientOptions: []option.ClientOption{
		option.WithoutAuthentication(),
		option.WithGRPCDialOption(grpc.WithTransportCredentials(insecure.NewCredentials())),
	}}
	for _, uri := range []string{
		"gcpkms://" + name + "?endpoint=" + srv.Addr + "&id=gcp-1",
		"gcpkms:///" + name + "?endpoint=" + srv.Addr + "&id=gcp-1&timeout=5s",
	} {
		kek, err := opener.Open(t.Context(), uri)
		require.NoError(t, err, uri)
		roundTrip(t, kek, "gcp-1", false)
		require.NoError(t, kek.(io.Closer).Close())
	}

	_, err := opener.Open(t.Context(), "gcpkms://"+name+"/cryptoKeyVersions/1?id=gcp-1")
	require.ErrorContains(t, err, "names a key version")
	_, err = opener.Open(t.Context(), "gcpkms://"+name+"?endpiont=x&id=gcp-1")
	require.ErrorContains(t, err, "endpiont")
}

func TestOpenVaultTransit(t *testing.T) {
	t.Parallel()
	srv := faketransit.Start(t)
	srv.CreateKey(t, "keybroker", true)
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	require.NoError(t, os.WriteFile(tokenFile, []byte(srv.Token(faketransit.TokenOptions{})), 0o600))
	secretIDFile := filepath.Join(dir, "secret-id")
	require.NoError(t, os.WriteFile(secretIDFile, []byte("secret-1"), 0o600))
	srv.AddAppRole("role-1", "secret-1", time.Hour, true)

	for _, uri := range []string{
		"vault-transit://keybroker?id=vault-1&address=" + srv.URL + "&token_file=" + tokenFile,
		"vault-transit://keybroker?id=vault-1&mount=transit&address=" + srv.URL + "&auth=approle&role_id=role-1&secret_id_file=" + secretIDFile + "&timeout=5s&max_retries=0",
	} {
		k, err := kekproviders.Open(t.Context(), uri)
		require.NoError(t, err, uri)
		roundTrip(t, k, "vault-1", false)
		_, ok := k.(kek.Rewrapper)
		require.True(t, ok, "vault-transit offers server-side rewrap")
		require.NoError(t, k.(io.Closer).Close())
	}

	_, err := kekproviders.Open(t.Context(), "vault-transit://keybroker?id=vault-1&address="+srv.URL+"&token="+"hvs.secret")
	require.ErrorContains(t, err, "unknown parameter token")
	require.NotContains(t, err.Error(), "hvs.secret")
}
