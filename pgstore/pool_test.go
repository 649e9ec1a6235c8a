package pgstore_test

import (
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/migrations"
	"github.com/keybroker/keybroker/pgstore"
)

func TestOpenPoolDefaults(t *testing.T) {
	t.Parallel()
	pool, err := pgstore.OpenPool(t.Context(), "postgres://u@127.0.0.1:1/db")
	require.NoError(t, err)
	defer pool.Close()
	cfg := pool.Config()
	require.Equal(t, 5*time.Second, cfg.ConnConfig.ConnectTimeout)
	require.EqualValues(t, max(8, 4*runtime.NumCPU()), cfg.MaxConns)
	require.EqualValues(t, pgstore.DefaultPoolSize(), cfg.MaxConns)
	require.Equal(t, "keybroker", cfg.ConnConfig.RuntimeParams["application_name"])
}

func TestOpenPoolURLWins(t *testing.T) {
	t.Parallel()
	pool, err := pgstore.OpenPool(t.Context(), "postgres://u@127.0.0.1:1/db?connect_timeout=9&pool_max_conns=3&application_name=other")
	require.NoError(t, err)
	defer pool.Close()
	cfg := pool.Config()
	require.Equal(t, 9*time.Second, cfg.ConnConfig.ConnectTimeout)
	require.EqualValues(t, 3, cfg.MaxConns)
	require.Equal(t, "other", cfg.ConnConfig.RuntimeParams["application_name"])
}

func TestOpenPoolHidesPassword(t *testing.T) {
	t.Parallel()
	_, err := pgstore.OpenPool(t.Context(), "postgres://u:s3cret@127.0.0.1:notaport/db")
	require.Error(t, err)
	require.NotContains(t, err.Error(), "s3cret")
}

func TestOpenPoolConnects(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	e.migrate(t, pgstore.DefaultSchema)
	pool, err := pgstore.OpenPool(t.Context(), e.runtime.URL)
	require.NoError(t, err)
	defer pool.Close()
	store, err := pgstore.New(t.Context(), pgstore.Config{Pool: pool})
	require.NoError(t, err)
	require.NoError(t, store.Ping(t.Context()))
	var app string
	require.NoError(t, pool.QueryRow(t.Context(), "SELECT current_setting('application_name')").Scan(&app))
	require.Equal(t, "keybroker", app)
}

func TestNewRequiresPool(t *testing.T) {
	t.Parallel()
	_, err := pgstore.New(t.Context(), pgstore.Config{})
	require.ErrorContains(t, err, "Config.Pool")
	require.False(t, broker.IsUnavailable(err))
}

func TestPingChecksTables(t *testing.T) {
	t.Parallel()
	e := newEnv(t)

	unmigrated := e.store(t, "keybroker")
	err := unmigrated.Ping(t.Context())
	require.Error(t, err, "an unmigrated schema is not ready")
	require.False(t, broker.IsUnavailable(err))

	_, err = migrations.Apply(t.Context(), e.migratorPool, "keybroker")
	require.NoError(t, err)
	err = unmigrated.Ping(t.Context())
	require.Error(t, err, "a runtime role without grants is not ready")

	grantRuntime(t, e.migratorPool, "keybroker", e.runtime.Name)
	require.NoError(t, e.store(t, "keybroker").Ping(t.Context()))
}
