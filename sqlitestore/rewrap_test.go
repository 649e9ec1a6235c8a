package sqlitestore_test

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/kek"
	"github.com/keybroker/keybroker/kekproviders/localkek"
)

func localKEK(t *testing.T, id string) broker.KEK {
	t.Helper()
	key := make([]byte, 32)
	rand.Read(key)
	k, err := localkek.New(id, key, false)
	require.NoError(t, err)
	return k
}

// rotatingKEK is a real KEK that has its user rotate once, on the job's
// first wrap of that user, between the job's read and its write.
type rotatingKEK struct {
	broker.KEK
	user   string
	fired  atomic.Bool
	rotate func(ctx context.Context)
}

func (r *rotatingKEK) Wrap(ctx context.Context, pt []byte, b map[string]string) ([]byte, error) {
	if b[kek.BindingUserID] == r.user && r.fired.CompareAndSwap(false, true) {
		r.rotate(ctx)
	}
	return r.KEK.Wrap(ctx, pt, b)
}

// TestRewrapJobOnSQLite runs the re-wrap job on the embedded store: bound
// and legacy rows move to the new KEK, zero-knowledge rows stay, a user's
// rotation during the job wins, every key still opens.
func TestRewrapJobOnSQLite(t *testing.T) {
	t.Parallel()
	store := openStore(t, t.TempDir())
	raw := rawDB(t, store.Path())
	ctx := t.Context()
	reopenFormat1(t, raw) // format-1 rows are imported below
	old := localKEK(t, "env-v1")
	keys := map[string][]byte{}
	now := time.Now().UTC()
	for i := range 45 {
		user := fmt.Sprintf("user-%03d", i)
		mk := make([]byte, 32)
		rand.Read(mk)
		keys[user] = mk
		format := broker.FormatBound
		var binding map[string]string
		if i%3 == 0 {
			format = broker.FormatLegacy
		} else {
			binding = broker.BindingContext(user, "env-v1", format)
		}
		wrapped, err := old.Wrap(ctx, mk, binding)
		require.NoError(t, err)
		wrappedMK, iv := base64.StdEncoding.EncodeToString(wrapped), ""
		if format == broker.FormatLegacy {
			iv, wrappedMK = base64.StdEncoding.EncodeToString(wrapped[:12]), base64.StdEncoding.EncodeToString(wrapped[12:])
		}
		_, err = raw.ExecContext(ctx, `INSERT INTO encryption_vaults (user_id, wrapped_mk, wrap_iv, format_version, kek_id, created_at)
VALUES (?1, ?2, ?3, ?4, 'env-v1', ?5)`, user, wrappedMK, iv, format, now.Format(time.RFC3339Nano))
		require.NoError(t, err)
	}
	_, err := raw.ExecContext(ctx, `INSERT INTO encryption_vaults (user_id, format_version, kek_id, recovery_wrapped_mk, recovery_iv, zero_knowledge, created_at)
VALUES ('zk', 2, 'env-v1', 'cmVj', 'aXY=', 1, ?1)`, now.Format(time.RFC3339Nano))
	require.NoError(t, err)

	counts, err := store.KEKCounts(ctx)
	require.NoError(t, err)
	require.Equal(t, []broker.KEKCount{
		{KEKID: "env-v1", FormatVersion: 1, Wrapped: true, Rows: 15},
		{KEKID: "env-v1", FormatVersion: 2, Wrapped: false, ZeroKnowledge: true, Rows: 1},
		{KEKID: "env-v1", FormatVersion: 2, Wrapped: true, Rows: 30},
	}, counts)

	next := &rotatingKEK{KEK: localKEK(t, "env-v2"), user: "user-010"}
	ring, err := broker.NewKeyring(next, old)
	require.NoError(t, err)
	svc, err := broker.New(ctx, broker.Config{Store: store, Keyring: ring})
	require.NoError(t, err)
	var rotateErr error
	next.rotate = func(ctx context.Context) {
		var res *broker.KeyResult
		res, rotateErr = svc.Rotate(ctx, "user-010", broker.RequestMeta{})
		if rotateErr == nil {
			keys["user-010"] = res.MasterKey
		}
	}
	job, err := broker.NewRewrapJob(broker.RewrapConfig{Store: store, Keyring: ring, BatchSize: 8, Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	res, err := job.Run(ctx)
	require.NoError(t, err)
	require.NoError(t, rotateErr)
	require.EqualValues(t, 45, res.Total)
	require.EqualValues(t, 44, res.Done)
	require.EqualValues(t, 1, res.Skipped, "the rotated row")

	counts, err = store.KEKCounts(ctx)
	require.NoError(t, err)
	require.Equal(t, []broker.KEKCount{
		{KEKID: "env-v1", FormatVersion: 2, Wrapped: false, ZeroKnowledge: true, Rows: 1},
		{KEKID: "env-v2", FormatVersion: 2, Wrapped: true, Rows: 45},
	}, counts)
	var audits, auditUsers int
	require.NoError(t, raw.QueryRowContext(ctx, `SELECT count(*), count(DISTINCT user_id) FROM encryption_vault_audit WHERE action = 'kek_rewrap'`).Scan(&audits, &auditUsers))
	require.Equal(t, 44, audits)
	require.Equal(t, 44, auditUsers)

	onlyNew, err := broker.NewKeyring(next.KEK)
	require.NoError(t, err)
	require.NoError(t, broker.CheckKeyringCoversRows(ctx, store, onlyNew))
	fresh, err := broker.New(ctx, broker.Config{Store: store, Keyring: onlyNew})
	require.NoError(t, err)
	for user, mk := range keys {
		got, err := fresh.Key(ctx, user, broker.RequestMeta{})
		require.NoError(t, err, user)
		require.Equal(t, mk, got.MasterKey, user)
	}
	var wrapped *string
	require.NoError(t, raw.QueryRowContext(ctx, `SELECT wrapped_mk FROM encryption_vaults WHERE user_id = 'zk'`).Scan(&wrapped))
	require.Nil(t, wrapped, "the zero-knowledge row is untouched")
}
