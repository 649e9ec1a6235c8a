package broker_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/internal/testkit/kmstest/fakegcpkms"
	"github.com/keybroker/keybroker/internal/testkit/kmstest/localkms"
	"github.com/keybroker/keybroker/kekproviders/awskms"
	"github.com/keybroker/keybroker/kekproviders/gcpkms"
)

// region is one local-kms instance standing for one AWS region, with a
// key that replicas name by its ARN.
type region struct {
	kms *localkms.Server
	arn string
}

func newRegion(t *testing.T, alias string) region {
	t.Helper()
	kms := localkms.Start(t)
	return region{kms: kms, arn: kms.CreateKey(t, alias).ARN}
}

// kek is a fresh client of the region's key, as a replica that starts
// opens one.
func (r region) kek(t *testing.T, id string) broker.KEK {
	t.Helper()
	k, err := awskms.New(context.Background(), awskms.Config{ID: id, KeyID: r.arn, Endpoint: r.kms.URL,
		Region: localkms.Region, Credentials: localkms.Credentials(), Timeout: 3 * time.Second, MaxAttempts: 1})
	require.NoError(t, err)
	return k
}

// several is the keyring configuration of active then also, all cached.
func several(active broker.KEK, also ...broker.KEK) broker.KeyringConfig {
	cached := []string{active.ID()}
	for _, k := range also {
		cached = append(cached, k.ID())
	}
	return broker.KeyringConfig{Active: active, Also: also, Cached: cached, Logger: slog.New(slog.DiscardHandler)}
}

// initVaults makes n vaults and returns their master keys.
func initVaults(t *testing.T, svc *broker.Service, n int) map[string][]byte {
	t.Helper()
	keys := map[string][]byte{}
	for i := range n {
		user := fmt.Sprintf("user-%d", i)
		res, err := svc.Init(context.Background(), user, broker.RequestMeta{})
		require.NoError(t, err)
		keys[user] = res.MasterKey
	}
	return keys
}

// requireFetches fetches every user's key and compares it.
func requireFetches(t *testing.T, svc *broker.Service, keys map[string][]byte) {
	t.Helper()
	for user, mk := range keys {
		res, err := svc.Key(context.Background(), user, broker.RequestMeta{})
		require.NoError(t, err, "fetch of %s", user)
		require.Equal(t, mk, res.MasterKey, "key of %s", user)
	}
}

// wrappers lists the KEK ids that wrap each stored data key.
func wrappers(t *testing.T, e *envelopeEnv) map[string][]string {
	t.Helper()
	list, err := e.store.DataKeyList(context.Background())
	require.NoError(t, err)
	out := map[string][]string{}
	for _, dk := range list {
		for _, w := range dk.AllWraps() {
			out[dk.ID] = append(out[dk.ID], w.KEKID)
		}
	}
	return out
}

// TestSeveralKEKsARegionDownBeforeAStart: two local-kms instances stand
// for two AWS regions, and every data key is wrapped in both. Each is
// stopped in turn before a replica starts: the replica is ready, opens
// every row and writes new ones, and says which KEK opened nothing.
func TestSeveralKEKsARegionDownBeforeAStart(t *testing.T) {
	for _, down := range []string{"aws-eu", "aws-us"} {
		t.Run(down+"Down", func(t *testing.T) {
			e := newEnvelopeEnv(t)
			regions := map[string]region{"aws-eu": newRegion(t, "kb-eu"), "aws-us": newRegion(t, "kb-us")}
			svc, ring := e.service(t, several(regions["aws-eu"].kek(t, "aws-eu"), regions["aws-us"].kek(t, "aws-us")))
			require.NoError(t, ring.Ready())
			require.Len(t, wrappers(t, e), 1)
			for _, by := range wrappers(t, e) {
				require.Equal(t, []string{"aws-eu", "aws-us"}, by, "the first data key is wrapped in both regions")
			}
			keys := initVaults(t, svc, 5)

			regions[down].kms.Close()
			svc2, ring2 := e.service(t, several(regions["aws-eu"].kek(t, "aws-eu"), regions["aws-us"].kek(t, "aws-us")))
			require.NoError(t, ring2.Ready(), "ready with one region down")
			requireFetches(t, svc2, keys)
			res, err := svc2.Init(context.Background(), "newcomer", broker.RequestMeta{})
			require.NoError(t, err, "new vaults are wrapped too")
			keys["newcomer"] = res.MasterKey
			requireFetches(t, svc, keys)

			// Both regions were asked; the one down opened nothing.
			require.Eventually(t, func() bool {
				row, _ := ring2.DataKeyKEK(down)
				return row.Err != nil
			}, 10*time.Second, 10*time.Millisecond)
			for _, id := range []string{"aws-eu", "aws-us"} {
				row, ok := ring2.DataKeyKEK(id)
				require.True(t, ok)
				require.Equal(t, 1, row.Wraps)
				require.Equal(t, 1, row.Total)
				require.True(t, row.Wrapping)
				if id == down {
					require.Zero(t, row.Opened)
					require.True(t, broker.IsUnavailable(row.Err), "%v", row.Err)
				} else {
					require.Equal(t, 1, row.Opened)
					require.NoError(t, row.Err)
				}
			}
		})
	}
}

// TestSeveralKEKsAWSBesideGCP: a Cloud KMS key (the gRPC fake driven by
// the real client) beside local-kms; either alone opens the data keys.
func TestSeveralKEKsAWSBesideGCP(t *testing.T) {
	e := newEnvelopeEnv(t)
	aws := newRegion(t, "kb")
	gcp := fakegcpkms.Start(t)
	keyName := gcp.CreateKey(t, "kb")
	gcpKEK := func() broker.KEK {
		k, err := gcpkms.New(context.Background(), gcpkms.Config{ID: "gcp-1", KeyName: keyName, Timeout: 3 * time.Second, ClientOptions: gcp.ClientOptions()})
		require.NoError(t, err)
		t.Cleanup(func() { k.Close() })
		return k
	}
	svc, ring := e.service(t, several(aws.kek(t, "aws-1"), gcpKEK()))
	require.NoError(t, ring.Ready())
	keys := initVaults(t, svc, 3)

	// GCP down: AWS opens.
	gcp.Stop()
	svc2, ring2 := e.service(t, several(aws.kek(t, "aws-1"), gcpKEK()))
	require.NoError(t, ring2.Ready())
	requireFetches(t, svc2, keys)

	// AWS down too: nothing opens (any one KEK, not none).
	aws.kms.Close()
	_, ring3 := e.service(t, several(aws.kek(t, "aws-1"), gcpKEK()))
	require.Error(t, ring3.Ready(), "with every KEK down nothing opens")
	require.True(t, broker.IsUnavailable(ring3.Ready()), "%v", ring3.Ready())
}

// TestAddingAKEKWrapsExistingDataKeysOnline: a KEK added to the list
// wraps the data keys that exist at the next load; from then on it alone
// opens them. Before that, removing the only KEK that wraps them is
// refused.
func TestAddingAKEKWrapsExistingDataKeysOnline(t *testing.T) {
	e := newEnvelopeEnv(t)
	eu, us := newRegion(t, "kb-eu"), newRegion(t, "kb-us")
	svc, ring := e.service(t, several(eu.kek(t, "aws-eu")))
	require.NoError(t, ring.Ready())
	keys := initVaults(t, svc, 3)
	first := ring.ActiveID()

	// aws-us alone, aws-eu dropped: refused, naming aws-eu. (Its keyring
	// mints a data key of its own, which no row names.)
	_, usOnly := e.service(t, several(us.kek(t, "aws-us")))
	err := broker.CheckDataKeyWraps(context.Background(), e.store, usOnly)
	var wrapErr *broker.DataKeyWrapError
	require.ErrorAs(t, err, &wrapErr)
	require.ErrorContains(t, err, `"aws-eu"`)
	require.ErrorContains(t, err, "(3 rows)")

	// aws-us added to the list: it wraps the existing data key online.
	_, both := e.service(t, several(eu.kek(t, "aws-eu"), us.kek(t, "aws-us")))
	both.WaitDataKeyWraps()
	require.Equal(t, []string{"aws-eu", "aws-us"}, wrappers(t, e)[first], "the data key the rows need")
	for _, by := range wrappers(t, e) {
		require.ElementsMatch(t, []string{"aws-eu", "aws-us"}, by, "every data key")
	}
	row, _ := both.DataKeyKEK("aws-us")
	require.Equal(t, 2, row.Wraps)

	// Now aws-eu may go, and aws-us alone opens every row.
	eu.kms.Close()
	svc3, usOnly := e.service(t, several(us.kek(t, "aws-us")))
	require.NoError(t, broker.CheckDataKeyWraps(context.Background(), e.store, usOnly))
	require.NoError(t, usOnly.Ready())
	requireFetches(t, svc3, keys)
}

// TestRotatingOneKEKWhileTheOtherIsDown: aws-eu is down; the operator
// replaces aws-us by aws-us-2 (aws-us kept decrypt-only). A replica starts
// ready through aws-us, wraps the data key under aws-us-2, and a data key
// minted meanwhile is wrapped by the KEKs that answer; aws-us can then go.
func TestRotatingOneKEKWhileTheOtherIsDown(t *testing.T) {
	ctx := context.Background()
	e := newEnvelopeEnv(t)
	eu, us, us2 := newRegion(t, "kb-eu"), newRegion(t, "kb-us"), newRegion(t, "kb-us-2")
	svc, ring := e.service(t, several(eu.kek(t, "aws-eu"), us.kek(t, "aws-us")))
	require.NoError(t, ring.Ready())
	keys := initVaults(t, svc, 3)
	first := ring.ActiveID()

	eu.kms.Close()
	cfg := several(eu.kek(t, "aws-eu"), us2.kek(t, "aws-us-2"))
	cfg.DecryptOnly, cfg.Cached = []broker.KEK{us.kek(t, "aws-us")}, append(cfg.Cached, "aws-us")
	svc2, ring2 := e.service(t, cfg)
	require.NoError(t, ring2.Ready(), "aws-us, decrypt-only, opens the data key")
	ring2.WaitDataKeyWraps()
	require.Equal(t, []string{"aws-eu", "aws-us", "aws-us-2"}, wrappers(t, e)[first])
	requireFetches(t, svc2, keys)

	// A data key minted while aws-eu is down: wrapped by aws-us-2 alone.
	second, minted, err := ring2.RotateDataKey(ctx)
	require.NoError(t, err)
	require.True(t, minted)
	require.Equal(t, []string{"aws-us-2"}, wrappers(t, e)[second])
	res, err := svc2.Init(ctx, "after-rotation", broker.RequestMeta{})
	require.NoError(t, err)
	require.Equal(t, second, res.KEKID)
	keys["after-rotation"] = res.MasterKey

	// aws-us goes: aws-us-2 wraps both data keys. aws-eu alone would not
	// do: the second data key's only wrap is aws-us-2's.
	svc3, ring3 := e.service(t, several(eu.kek(t, "aws-eu"), us2.kek(t, "aws-us-2")))
	require.NoError(t, broker.CheckDataKeyWraps(ctx, e.store, ring3))
	require.NoError(t, ring3.Ready())
	requireFetches(t, svc3, keys)
	_, euOnly := e.service(t, several(eu.kek(t, "aws-eu")))
	err = broker.CheckDataKeyWraps(ctx, e.store, euOnly)
	require.ErrorContains(t, err, second)
	require.ErrorContains(t, err, `"aws-us-2"`)
}

// TestSeveralKEKsReadiness: with one KEK of two down, the replica's
// readiness checks show that KEK degraded (not unready) with the data
// keys it opens, and the other ok.
func TestSeveralKEKsReadiness(t *testing.T) {
	e := newEnvelopeEnv(t)
	eu, us := newRegion(t, "kb-eu"), newRegion(t, "kb-us")
	_, ring := e.service(t, several(eu.kek(t, "aws-eu"), us.kek(t, "aws-us")))
	require.NoError(t, ring.Ready())
	eu.kms.Close()
	_, ring2 := e.service(t, several(eu.kek(t, "aws-eu"), us.kek(t, "aws-us")))
	rt, err := broker.NewRuntime(t.Context(), broker.RuntimeConfig{Store: e.store, Keyring: ring2, Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	seen := map[string]bool{}
	for _, c := range rt.Checks() {
		if c.Name != "kek" {
			continue
		}
		seen[c.ID] = true
		err := c.Probe(t.Context())
		require.NotNil(t, c.DataKeys)
		if c.ID == "aws-eu" {
			var degraded *broker.DegradedError
			require.True(t, errors.As(err, &degraded), "the region down is degraded: %v", err)
			require.Eventually(t, func() bool { row, _ := c.DataKeys(); return row.Err != nil }, 10*time.Second, 10*time.Millisecond)
			row, _ := c.DataKeys()
			require.Equal(t, 0, row.Opened)
			require.Equal(t, 1, row.Wraps)
		} else {
			require.NoError(t, err)
			row, _ := c.DataKeys()
			require.Equal(t, 1, row.Opened)
		}
	}
	require.Len(t, seen, 2)
}

// blackholeEndpoint accepts connections and never answers, as a KMS
// region in trouble can: every call on it waits for its timeout.
func blackholeEndpoint(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	done := make(chan struct{})
	var conns sync.WaitGroup
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			conns.Go(func() {
				<-done
				c.Close()
			})
		}
	}()
	t.Cleanup(func() { ln.Close(); close(done); conns.Wait() })
	return "http://" + ln.Addr().String()
}

// TestSeveralKEKsARegionHangingBeforeAStart: the first region accepts
// connections and never answers, with a 30s timeout. A replica is ready
// as soon as the second region answers, not after the first's timeout:
// the KEKs are asked at once.
func TestSeveralKEKsARegionHangingBeforeAStart(t *testing.T) {
	e := newEnvelopeEnv(t)
	eu, us := newRegion(t, "kb-eu"), newRegion(t, "kb-us")
	svc, ring := e.service(t, several(eu.kek(t, "aws-eu"), us.kek(t, "aws-us")))
	require.NoError(t, ring.Ready())
	keys := initVaults(t, svc, 3)

	hanging, err := awskms.New(context.Background(), awskms.Config{ID: "aws-eu", KeyID: eu.arn, Endpoint: blackholeEndpoint(t),
		Region: localkms.Region, Credentials: localkms.Credentials(), Timeout: 30 * time.Second, MaxAttempts: 1})
	require.NoError(t, err)
	start := time.Now()
	svc2, ring2 := e.service(t, several(hanging, us.kek(t, "aws-us")))
	require.NoError(t, ring2.Ready())
	require.Less(t, time.Since(start), 15*time.Second, "ready without waiting for the hanging region's 30s timeout")
	requireFetches(t, svc2, keys)
	row, _ := ring2.DataKeyKEK("aws-us")
	require.Equal(t, 1, row.Opened)
}

// TestSeveralKEKsWrapsAreBoundToTheirDataKeyAndKEK is the attack of a
// database writer on the other wraps: swapping two data keys' wraps by
// one KEK, or relabelling a wrap as another KEK's, opens nothing — each
// wrap is bound to its data key id and KEK id (the KMS refuses the
// encryption context), so the replica that depends on those wraps is not
// ready, and no fetch answers with a key.
func TestSeveralKEKsWrapsAreBoundToTheirDataKeyAndKEK(t *testing.T) {
	ctx := context.Background()
	e := newEnvelopeEnv(t)
	eu, us := newRegion(t, "kb-eu"), newRegion(t, "kb-us")
	svc, ring := e.service(t, several(eu.kek(t, "aws-eu"), us.kek(t, "aws-us")))
	require.NoError(t, ring.Ready())
	first := ring.ActiveID()
	keys := initVaults(t, svc, 2)
	second, _, err := ring.RotateDataKey(ctx)
	require.NoError(t, err)
	res, err := svc.Init(ctx, "later", broker.RequestMeta{})
	require.NoError(t, err)
	require.Equal(t, second, res.KEKID)
	keys["later"] = res.MasterKey
	eu.kms.Close() // from now on only aws-us's wraps can open anything

	for name, attack := range map[string]string{
		"SwapBetweenDataKeys": `UPDATE keybroker.kek_data_key_wraps w SET wrapped = o.wrapped FROM keybroker.kek_data_key_wraps o
			WHERE w.kek_id = 'aws-us' AND o.kek_id = 'aws-us' AND w.data_key_id <> o.data_key_id`,
		"RelabelAsAnotherKEK": `UPDATE keybroker.kek_data_key_wraps SET kek_id = 'aws-us-2'`,
	} {
		t.Run(name, func(t *testing.T) {
			_, err := e.admin.Exec(ctx, `CREATE TABLE public.saved_wraps AS SELECT * FROM keybroker.kek_data_key_wraps`)
			require.NoError(t, err)
			defer func() {
				_, err := e.admin.Exec(ctx, `DELETE FROM keybroker.kek_data_key_wraps; INSERT INTO keybroker.kek_data_key_wraps SELECT * FROM public.saved_wraps; DROP TABLE public.saved_wraps`)
				require.NoError(t, err)
			}()
			tag, err := e.admin.Exec(ctx, attack)
			require.NoError(t, err)
			require.EqualValues(t, 2, tag.RowsAffected())

			cfg := several(eu.kek(t, "aws-eu"), us.kek(t, "aws-us"))
			if name == "RelabelAsAnotherKEK" {
				// The writer also configures nothing: a KEK "aws-us-2" on
				// the same KMS key as aws-us.
				cfg = several(eu.kek(t, "aws-eu"), us.kek(t, "aws-us-2"))
			}
			svc2, ring2 := e.service(t, cfg)
			require.Error(t, ring2.Ready(), "nothing opened through a moved wrap")
			for user := range keys {
				got, err := svc2.Key(ctx, user, broker.RequestMeta{})
				require.Error(t, err, "no key for %s", user)
				require.Nil(t, got)
			}
			for _, id := range []string{first, second} {
				require.NotContains(t, ring2.IDs(), id)
			}
		})
	}
	// Untouched, the same wraps open every row through aws-us alone.
	svc3, ring3 := e.service(t, several(eu.kek(t, "aws-eu"), us.kek(t, "aws-us")))
	require.NoError(t, ring3.Ready())
	requireFetches(t, svc3, keys)
}
