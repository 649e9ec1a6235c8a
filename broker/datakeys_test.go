package broker_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/internal/testkit/kmstest/localkms"
	"github.com/keybroker/keybroker/internal/testkit/pgtest"
	"github.com/keybroker/keybroker/kekproviders/awskms"
	"github.com/keybroker/keybroker/kekproviders/localkek"
	"github.com/keybroker/keybroker/migrations"
	"github.com/keybroker/keybroker/pgstore"
)

// countedKEK is a real provider with a count of its calls.
type countedKEK struct {
	broker.KEK
	calls atomic.Int64
}

func (c *countedKEK) Wrap(ctx context.Context, pt []byte, b map[string]string) ([]byte, error) {
	c.calls.Add(1)
	return c.KEK.Wrap(ctx, pt, b)
}

func (c *countedKEK) Unwrap(ctx context.Context, ct []byte, b map[string]string) ([]byte, error) {
	c.calls.Add(1)
	return c.KEK.Unwrap(ctx, ct, b)
}

func newLocal(id string, key []byte) (broker.KEK, error) { return localkek.New(id, key, false) }

type envelopeEnv struct {
	kms   *localkms.Server
	store *pgstore.Store
	admin *pgxpool.Pool // superuser: reads every row, as a database thief would
}

func newEnvelopeEnv(t *testing.T) *envelopeEnv {
	t.Helper()
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	ctx := context.Background()
	pool := pgtest.NewPool(t, pgtest.NewDatabase(t))
	_, err := migrations.Apply(ctx, pool, "keybroker")
	require.NoError(t, err)
	store, err := pgstore.New(ctx, pgstore.Config{Pool: pool, Schema: "keybroker"})
	require.NoError(t, err)
	return &envelopeEnv{kms: localkms.Start(t), store: store, admin: pool}
}

func (e *envelopeEnv) awsKEK(t *testing.T, id string, key localkms.Key) *countedKEK {
	t.Helper()
	kek, err := awskms.New(context.Background(), awskms.Config{ID: id, KeyID: key.ARN, Endpoint: e.kms.URL,
		Region: localkms.Region, Credentials: localkms.Credentials(), Timeout: 3 * time.Second, MaxAttempts: 1})
	require.NoError(t, err)
	return &countedKEK{KEK: kek}
}

func (e *envelopeEnv) service(t *testing.T, cfg broker.KeyringConfig) (*broker.Service, *broker.Keyring) {
	t.Helper()
	cfg.DataKeys, cfg.NewLocalKEK = e.store, newLocal
	if cfg.RefreshMinInterval == 0 {
		cfg.RefreshMinInterval = time.Nanosecond
	}
	ring, err := broker.LoadKeyring(context.Background(), cfg)
	require.NoError(t, err)
	svc, err := broker.New(context.Background(), broker.Config{Store: e.store, Keyring: ring})
	require.NoError(t, err)
	return svc, ring
}

// TestCachedEnvelopeMakesNoKMSCallPerFetch: after start, wraps and fetches
// are local; a second replica opens the same data key with one KMS call.
func TestCachedEnvelopeMakesNoKMSCallPerFetch(t *testing.T) {
	ctx := context.Background()
	e := newEnvelopeEnv(t)
	remote := e.awsKEK(t, "aws-1", e.kms.CreateKey(t, "kb"))
	svc, ring := e.service(t, broker.KeyringConfig{Active: remote, Cached: []string{"aws-1"}})
	require.NoError(t, ring.Ready())
	require.Contains(t, ring.ActiveID(), "dk-", "new wraps use a data key")
	require.EqualValues(t, 1, remote.calls.Load(), "one KMS call to wrap the first data key")

	keys := map[string][]byte{}
	for u := range 10 {
		user := fmt.Sprintf("u%d", u)
		res, err := svc.Init(ctx, user, broker.RequestMeta{})
		require.NoError(t, err)
		require.Equal(t, ring.ActiveID(), res.KEKID)
		keys[user] = res.MasterKey
	}
	for range 10 {
		for user, mk := range keys {
			res, err := svc.Key(ctx, user, broker.RequestMeta{})
			require.NoError(t, err)
			require.Equal(t, mk, res.MasterKey)
		}
	}
	require.EqualValues(t, 1, remote.calls.Load(), "no KMS call per fetch")

	// A second replica loads the same data key with one unwrap.
	remote2 := e.awsKEK(t, "aws-1", localkms.Key{ARN: mustARN(t, e, "alias/kb")})
	svc2, ring2 := e.service(t, broker.KeyringConfig{Active: remote2, Cached: []string{"aws-1"}})
	require.Equal(t, ring.ActiveID(), ring2.ActiveID())
	require.EqualValues(t, 1, remote2.calls.Load())
	res, err := svc2.Key(ctx, "u3", broker.RequestMeta{})
	require.NoError(t, err)
	require.Equal(t, keys["u3"], res.MasterKey)

	// KMS outage after start: fetches go on, a refresh keeps the keys.
	e.kms.Close()
	res, err = svc.Key(ctx, "u4", broker.RequestMeta{})
	require.NoError(t, err)
	require.Equal(t, keys["u4"], res.MasterKey)
	require.NoError(t, ring.Refresh(ctx), "an unreachable KMS keeps the loaded keys")
	require.NoError(t, ring.Ready())
	res, err = svc.Rotate(ctx, "u5", broker.RequestMeta{})
	require.NoError(t, err, "new wraps are local too")
	require.NotEqual(t, keys["u5"], res.MasterKey)

	// A new replica that cannot reach the KMS starts not ready, and a
	// fetch is a clear 503-class error.
	remote3 := e.awsKEK(t, "aws-1", localkms.Key{ARN: "arn:aws:kms:" + localkms.Region + ":" + localkms.AccountID + ":alias/kb"})
	svc3, ring3 := e.service(t, broker.KeyringConfig{Active: remote3, Cached: []string{"aws-1"}})
	require.Error(t, ring3.Ready())
	require.True(t, broker.IsUnavailable(ring3.Ready()), "readiness says the KMS is unreachable: %v", ring3.Ready())
	_, err = svc3.Key(ctx, "u4", broker.RequestMeta{})
	require.Error(t, err)
	_, err = svc3.Init(ctx, "newcomer", broker.RequestMeta{})
	require.True(t, broker.IsUnavailable(err), "no wrap without a data key: %v", err)
}

func mustARN(t *testing.T, e *envelopeEnv, alias string) string {
	t.Helper()
	return "arn:aws:kms:" + localkms.Region + ":" + localkms.AccountID + ":" + alias
}

// TestCachedEnvelopeRemoteKEKChangeMovesOnlyDataKeys: a new remote KEK
// re-wraps the data key; user rows keep their kek_id and keep opening.
func TestCachedEnvelopeRemoteKEKChangeMovesOnlyDataKeys(t *testing.T) {
	ctx := context.Background()
	e := newEnvelopeEnv(t)
	oldRemote := e.awsKEK(t, "aws-old", e.kms.CreateKey(t, "old"))
	svc, ring := e.service(t, broker.KeyringConfig{Active: oldRemote, Cached: []string{"aws-old"}})
	res, err := svc.Init(ctx, "alice", broker.RequestMeta{})
	require.NoError(t, err)
	dataKeyID := ring.ActiveID()

	oldAgain := e.awsKEK(t, "aws-old", localkms.Key{ARN: mustARN(t, e, "alias/old")})
	newRemote := e.awsKEK(t, "aws-new", e.kms.CreateKey(t, "new"))
	svc2, ring2 := e.service(t, broker.KeyringConfig{Active: newRemote, DecryptOnly: []broker.KEK{oldAgain}, Cached: []string{"aws-new", "aws-old"}})
	require.NoError(t, ring2.Ready())
	require.Equal(t, dataKeyID, ring2.ActiveID(), "the data key stays; only its wrap moved")
	list, err := e.store.DataKeyList(ctx)
	require.NoError(t, err)
	require.Len(t, list, 1)
	require.Equal(t, "aws-new", list[0].WrappedBy)

	got, err := svc2.Key(ctx, "alice", broker.RequestMeta{})
	require.NoError(t, err)
	require.Equal(t, res.MasterKey, got.MasterKey)
	require.Equal(t, dataKeyID, got.KEKID)

	// With only the new remote configured, the data key still opens.
	newOnly := e.awsKEK(t, "aws-new", localkms.Key{ARN: mustARN(t, e, "alias/new")})
	svc3, _ := e.service(t, broker.KeyringConfig{Active: newOnly, Cached: []string{"aws-new"}})
	got, err = svc3.Key(ctx, "alice", broker.RequestMeta{})
	require.NoError(t, err)
	require.Equal(t, res.MasterKey, got.MasterKey)
}

// TestCachedEnvelopeRevocationAtRefresh: disabling the KMS key takes
// effect at the next refresh.
func TestCachedEnvelopeRevocationAtRefresh(t *testing.T) {
	ctx := context.Background()
	e := newEnvelopeEnv(t)
	key := e.kms.CreateKey(t, "kb")
	remote := e.awsKEK(t, "aws-1", key)
	svc, ring := e.service(t, broker.KeyringConfig{Active: remote, Cached: []string{"aws-1"}})
	_, err := svc.Init(ctx, "alice", broker.RequestMeta{})
	require.NoError(t, err)

	e.kms.DisableKey(t, key.ID)
	require.Error(t, ring.Refresh(ctx))
	require.Error(t, ring.Ready())
	_, err = svc.Key(ctx, "alice", broker.RequestMeta{})
	require.Error(t, err, "a revoked KMS key stops fetches after the refresh")
	list, err := e.store.DataKeyList(ctx)
	require.NoError(t, err)
	require.Len(t, list, 1, "no second data key is made while the first cannot be opened")
}
