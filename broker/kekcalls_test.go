package broker_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/internal/testkit/kmstest/fakegcpkms"
	"github.com/keybroker/keybroker/internal/testkit/kmstest/faketransit"
	"github.com/keybroker/keybroker/internal/testkit/kmstest/localkms"
	"github.com/keybroker/keybroker/kek"
	"github.com/keybroker/keybroker/kekproviders/awskms"
	"github.com/keybroker/keybroker/kekproviders/gcpkms"
	"github.com/keybroker/keybroker/kekproviders/vaulttransit"
)

// callLog records what a keyring reports to KeyringConfig.OnKEKCall.
type callLog struct {
	mu    sync.Mutex
	calls []kek.Call
}

func (l *callLog) record(c kek.Call) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.calls = append(l.calls, c)
}

// ops lists the reported calls as "id op class", with every data key's id
// written dk.
func (l *callLog) ops() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]string, 0, len(l.calls))
	for _, c := range l.calls {
		id := c.KEKID
		if strings.HasPrefix(id, "dk-") {
			id = "dk"
		}
		out = append(out, fmt.Sprintf("%s %s %s", id, c.Op, kek.Classify(c.Err)))
	}
	return out
}

func (l *callLog) reset() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.calls = nil
}

// TestKeyringReportsEveryKEKCall: in cached envelope mode the keyring
// reports the remote KEK's wrap and unwrap of data keys and the data
// keys' own wraps and unwraps of user keys, each once, with its class;
// the re-wrap job's latest_version and rewrap go through it too. Nothing
// is reported for the stand-in of data keys not loaded yet, which calls
// no KEK.
func TestKeyringReportsEveryKEKCall(t *testing.T) {
	ctx := context.Background() // not parallel: newEnvelopeEnv sets the environment

	t.Run("CachedEnvelope", func(t *testing.T) {
		e := newEnvelopeEnv(t)
		remote := e.awsKEK(t, "aws-1", e.kms.CreateKey(t, "kb"))
		var log callLog
		svc, ring := e.service(t, broker.KeyringConfig{Active: remote, Cached: []string{"aws-1"}, OnKEKCall: log.record})
		require.Equal(t, []string{"aws-1 wrap ok"}, log.ops(), "the first data key is wrapped by the KMS")
		for _, c := range log.calls {
			require.Positive(t, c.Took)
		}

		log.reset()
		res, err := svc.Init(ctx, "alice", broker.RequestMeta{})
		require.NoError(t, err)
		_, err = svc.Key(ctx, "alice", broker.RequestMeta{})
		require.NoError(t, err)
		require.Equal(t, []string{"dk wrap ok", "dk unwrap ok", "dk unwrap ok"}, log.ops(),
			"seal wraps and unwraps its fresh wrap; a fetch unwraps")
		require.Equal(t, ring.ActiveID(), res.KEKID)

		var log2 callLog
		_, _ = e.service(t, broker.KeyringConfig{Active: remote, Cached: []string{"aws-1"}, OnKEKCall: log2.record})
		require.Equal(t, []string{"aws-1 unwrap ok"}, log2.ops(), "another replica unwraps the data key")

		e.kms.Close()
		var log3 callLog
		_, down := e.service(t, broker.KeyringConfig{Active: remote, Cached: []string{"aws-1"}, OnKEKCall: log3.record})
		require.Error(t, down.Ready())
		require.Equal(t, []string{"aws-1 unwrap unavailable"}, log3.ops(), "a failed call is reported with its class")
		standIn, err := down.Lookup(down.ActiveID())
		require.NoError(t, err)
		require.Nil(t, down.CallObserver(standIn), "the stand-in of unloaded data keys calls no KEK")
		require.NotNil(t, down.CallObserver(remote), "the remote's own calls (readiness) are observed")
	})

	t.Run("RewrapJob", func(t *testing.T) {
		e := newRewrapEnv(t)
		vault := faketransit.Start(t)
		vault.CreateKey(t, "keybroker", true)
		transit, err := vaulttransit.New(ctx, vaulttransit.Config{ID: "transit-1", Key: "keybroker", Address: vault.URL,
			Timeout: 10 * time.Second, Auth: vaulttransit.Auth{Token: vault.Token(faketransit.TokenOptions{})}})
		require.NoError(t, err)
		t.Cleanup(func() { require.NoError(t, transit.Close()) })
		e.seed(t, transit, "user", 2, broker.FormatBound)
		var log callLog
		ring, err := broker.LoadKeyring(ctx, broker.KeyringConfig{Active: transit, OnKEKCall: log.record})
		require.NoError(t, err)
		vault.RotateKey(t, "keybroker")
		res, err := e.job(t, ring).Run(ctx)
		require.NoError(t, err)
		require.EqualValues(t, 2, res.ServerRewrapped)
		require.ElementsMatch(t, []string{
			"transit-1 latest_version ok",
			"transit-1 rewrap ok", "transit-1 unwrap ok", // each row: rewrap, then the check that it opens
			"transit-1 rewrap ok", "transit-1 unwrap ok",
		}, log.ops())
	})
}

// TestKeyVersionRotationPerProvider: what the re-wrap job does when a KMS
// key gets a new version, for each provider with versions. Vault Transit
// moves every wrap to the newest version with transit/rewrap
// (TestRewrapVaultTransitKeyVersions). Cloud KMS and AWS KMS decrypt with
// whichever version made a wrap and name it to no caller, so the job
// leaves the rows as they are, without a single KMS call, and they keep
// opening.
func TestKeyVersionRotationPerProvider(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, p := range []struct {
		name string
		// open returns the provider's KEK over a fresh key, a function
		// that adds a key version where the test can, and one that counts
		// the backend's calls.
		open func(t *testing.T) (k broker.KEK, rotate func(), calls func() int)
	}{
		{"GCPKMS", func(t *testing.T) (broker.KEK, func(), func() int) {
			srv := fakegcpkms.Start(t)
			name := srv.CreateKey(t, "keybroker")
			k, err := gcpkms.New(ctx, gcpkms.Config{ID: "gcp-1", KeyName: name, Timeout: 10 * time.Second, ClientOptions: srv.ClientOptions()})
			require.NoError(t, err)
			t.Cleanup(func() { _ = k.Close() })
			calls := func() int { return srv.Calls("Encrypt") + srv.Calls("Decrypt") + srv.Calls("GetCryptoKey") }
			return k, func() { srv.Rotate(t, name) }, calls
		}},
		{"AWSKMS", func(t *testing.T) (broker.KEK, func(), func() int) {
			srv := localkms.Start(t)
			k, err := awskms.New(ctx, awskms.Config{ID: "aws-1", KeyID: srv.CreateKey(t, "").ARN, Endpoint: srv.URL,
				Region: localkms.Region, Credentials: localkms.Credentials(), Timeout: 10 * time.Second})
			require.NoError(t, err)
			// AWS rotates the backing key invisibly (local-kms cannot:
			// RotateKeyOnDemand answers 501); no caller sees a version.
			return k, func() {}, func() int { return int(srv.Requests()) }
		}},
	} {
		t.Run(p.name, func(t *testing.T) {
			t.Parallel()
			e := newRewrapEnv(t)
			k, rotate, calls := p.open(t)
			_, versions := k.(kek.Versioner)
			require.False(t, versions, "a %s ciphertext names no key version to the caller", p.name)
			keys := e.seed(t, k, "user", 5, broker.FormatBound)
			before := e.rows(t)
			rotate()

			made := calls()
			res, err := e.job(t, keyring(t, k)).Run(ctx)
			require.NoError(t, err)
			require.Zero(t, res.Done)
			require.Zero(t, res.ServerRewrapped)
			require.Equal(t, made, calls(), "the job makes no KMS call for rows already on the active KEK")
			require.Equal(t, before, e.rows(t), "no row changes")
			requireKeysOpen(t, e.service(t, keyring(t, k)), keys)
		})
	}
}
