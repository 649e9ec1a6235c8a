package main

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/kek"
	"github.com/keybroker/keybroker/kekproviders/localkek"
)

// TestCachedKEKProbe: with the data keys loaded, an unreachable KMS keeps
// a cached-mode replica ready; a KMS that refuses does not.
// internal/faults runs the whole story against a stopped KMS.
func TestCachedKEKProbe(t *testing.T) {
	t.Parallel()
	k, err := localkek.New("k", make([]byte, 32), true)
	require.NoError(t, err)
	loaded, err := broker.NewKeyring(k)
	require.NoError(t, err)
	for name, c := range map[string]struct {
		status error
		ok     bool
	}{
		"Reachable":   {nil, true},
		"Unreachable": {kek.Unavailable(errors.New("connection refused")), true},
		"TimedOut":    {context.DeadlineExceeded, true},
		"Denied":      {kek.Denied(errors.New("key disabled")), false},
		"OtherError":  {errors.New("wrong key purpose"), false},
	} {
		t.Run(name, func(t *testing.T) {
			probe := cachedKEKProbe(func(context.Context) error { return c.status }, loaded)
			err := probe(context.Background())
			if c.ok {
				require.NoError(t, err)
			} else {
				require.Error(t, err)
			}
		})
	}
	t.Run("UnreachableBeforeTheDataKeysLoad", func(t *testing.T) {
		unloaded, err := broker.LoadKeyring(context.Background(), broker.KeyringConfig{
			Active: k, Cached: []string{"k"}, DataKeys: downDataKeys{}, Logger: discardLogger(),
			NewLocalKEK: func(id string, key []byte) (broker.KEK, error) { return localkek.New(id, key, false) },
		})
		require.NoError(t, err)
		require.Error(t, unloaded.Ready())
		probe := cachedKEKProbe(func(context.Context) error { return kek.Unavailable(errors.New("connection refused")) }, unloaded)
		require.Error(t, probe(context.Background()))
	})
}

// downDataKeys is a data-key table that cannot be read.
type downDataKeys struct{}

func (downDataKeys) DataKeyList(context.Context) ([]broker.DataKey, error) {
	return nil, &broker.UnavailableError{Dependency: broker.DependencyStore, Err: errors.New("down")}
}
func (downDataKeys) DataKeyInsert(context.Context, broker.DataKey, string) (bool, error) {
	return false, errors.New("down")
}
func (downDataKeys) DataKeyRewrap(context.Context, string, string, []byte, string) (bool, error) {
	return false, errors.New("down")
}

// TestThrottleProbeSpacesCalls: a cached KEK's status is asked of the KMS
// at most once per interval; in between the last answer stands.
func TestThrottleProbeSpacesCalls(t *testing.T) {
	now := time.Unix(1_000_000, 0)
	calls := 0
	answer := error(nil)
	probe := throttleProbe(func(context.Context) error { calls++; return answer }, time.Minute, func() time.Time { return now })
	require.NoError(t, probe(context.Background()))
	answer = errors.New("refused")
	for range 5 {
		now = now.Add(10 * time.Second)
		require.NoError(t, probe(context.Background()), "within the interval the last answer stands")
	}
	require.Equal(t, 1, calls)
	now = now.Add(15 * time.Second)
	require.Error(t, probe(context.Background()), "after the interval the KMS is asked again")
	require.Equal(t, 2, calls)
}
