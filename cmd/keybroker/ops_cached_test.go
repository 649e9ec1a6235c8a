package main

import (
	"context"
	"errors"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/cmd/keybroker/internal/config"
	"github.com/keybroker/keybroker/kek"
	"github.com/keybroker/keybroker/kekproviders/localkek"
	"github.com/keybroker/keybroker/sqlitestore"
)

// kmsKEK is a KMS key whose status probe answers status; it wraps and
// unwraps locally.
type kmsKEK struct {
	broker.KEK
	status error
}

func (k *kmsKEK) Status(context.Context) error { return k.status }

// TestCachedKEKProbe: serve's readiness of a KEK its URI puts in cached
// envelope mode follows the cached rule — with the data keys loaded, a
// KMS that cannot be reached keeps the replica ready, and one that
// answers and refuses does not — while a KEK with cache=off is unready
// in either case. broker.TestCachedKEKProbe holds the rule itself, and
// internal/faults runs the whole story against a stopped KMS.
func TestCachedKEKProbe(t *testing.T) {
	t.Parallel()
	for name, c := range map[string]struct {
		cached bool
		status error
		ready  bool
	}{
		"CachedUnreachable": {true, kek.Unavailable(errors.New("connection refused")), true},
		"CachedTimedOut":    {true, context.DeadlineExceeded, true},
		"CachedDenied":      {true, kek.Denied(errors.New("key disabled")), false},
		"CachedReachable":   {true, nil, true},
		"DirectUnreachable": {false, kek.Unavailable(errors.New("connection refused")), false},
		"DirectReachable":   {false, nil, true},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ctx := t.Context()
			local, err := localkek.New("kms-1", make([]byte, 32), true)
			require.NoError(t, err)
			kms := &kmsKEK{KEK: local}
			keks := &openedKEKs{keks: []broker.KEK{kms}, schemes: map[string]string{"kms-1": "awskms"},
				specs: []config.KEKSpec{{Role: config.RoleActive, ID: "kms-1", Scheme: "awskms", Cached: c.cached}}}
			store, err := sqlitestore.Open(ctx, sqlitestore.Config{Dir: t.TempDir()})
			require.NoError(t, err)
			t.Cleanup(func() { _ = store.Close() })
			ring, err := keks.keyring(ctx, store, discardLogger(), 0, nil)
			require.NoError(t, err)
			require.NoError(t, ring.Ready(), "the data keys loaded")
			rt, err := broker.NewRuntime(ctx, broker.RuntimeConfig{Store: store, Keyring: ring, Logger: discardLogger()})
			require.NoError(t, err)
			t.Cleanup(rt.Close)
			kms.status = c.status // the KMS goes away after the start
			var probe func(context.Context) error
			for _, check := range rt.Checks() {
				if check.Name == "kek" && check.ID == "kms-1" {
					probe = check.Probe
				}
			}
			require.NotNil(t, probe)
			if c.ready {
				require.NoError(t, probe(ctx))
			} else {
				require.Error(t, probe(ctx))
			}
		})
	}
}
