package broker_test

import (
	"context"
	"encoding/base64"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/internal/testkit/kmstest/localkms"
	"github.com/keybroker/keybroker/kekproviders/localkek"
)

// fakeClock is a clock tests move by hand: no sleeps.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Now()} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// replica is one keybroker process in cached envelope mode over e's
// store, with its own KMS client.
func (e *envelopeEnv) replica(t *testing.T, cfg broker.KeyringConfig) (*broker.Service, *broker.Keyring) {
	t.Helper()
	cfg.Active = e.awsKEK(t, "aws-1", localkms.Key{ARN: mustARN(t, e, "alias/kb")})
	cfg.Cached = []string{"aws-1"}
	return e.service(t, cfg)
}

// dataKeyPlaintext is what an attacker holding a replica's memory (a core
// dump, a heap snapshot) has: the plaintext of data key id.
func (e *envelopeEnv) dataKeyPlaintext(t *testing.T, id string) []byte {
	t.Helper()
	list, err := e.store.DataKeyList(t.Context())
	require.NoError(t, err)
	for _, dk := range list {
		if dk.ID == id {
			kms := e.awsKEK(t, dk.WrappedBy, localkms.Key{ARN: mustARN(t, e, "alias/kb")})
			key, err := kms.Unwrap(t.Context(), dk.Wrapped, broker.DataKeyBinding(dk.ID, dk.WrappedBy))
			require.NoError(t, err)
			return key
		}
	}
	t.Fatalf("no data key %s", id)
	return nil
}

// storedRow is a row as a database thief reads it.
type storedRow struct {
	user, kekID string
	wrapped     []byte
}

func (e *envelopeEnv) stolenRows(t *testing.T) []storedRow {
	t.Helper()
	rows, err := e.admin.Query(t.Context(), `SELECT user_id, kek_id, wrapped_mk FROM keybroker.encryption_vaults WHERE wrapped_mk IS NOT NULL ORDER BY user_id`)
	require.NoError(t, err)
	defer rows.Close()
	var out []storedRow
	for rows.Next() {
		var r storedRow
		var wrapped string
		require.NoError(t, rows.Scan(&r.user, &r.kekID, &wrapped))
		r.wrapped, err = base64.StdEncoding.DecodeString(wrapped)
		require.NoError(t, err)
		out = append(out, r)
	}
	require.NoError(t, rows.Err())
	require.NotEmpty(t, out)
	return out
}

// opensWith reports which stored rows the stolen data key (id, key)
// opens, under the binding the row names and under the stolen key's id.
func opensWith(t *testing.T, rows []storedRow, id string, key []byte) []string {
	t.Helper()
	kek, err := localkek.New(id, key, false)
	require.NoError(t, err)
	var opened []string
	for _, r := range rows {
		for _, kekID := range []string{r.kekID, id} {
			if _, err := kek.Unwrap(context.Background(), r.wrapped, broker.BindingContext(r.user, kekID, broker.FormatBound)); err == nil {
				opened = append(opened, r.user)
				break
			}
		}
	}
	return opened
}

func (e *envelopeEnv) rowsUnder(t *testing.T) map[string]int64 {
	t.Helper()
	counts, err := e.store.KEKCounts(t.Context())
	require.NoError(t, err)
	out := map[string]int64{}
	for _, c := range counts {
		if c.Wrapped {
			out[c.KEKID] += c.Rows
		}
	}
	return out
}

func (e *envelopeEnv) dataKeyIDs(t *testing.T) []string {
	t.Helper()
	list, err := e.store.DataKeyList(t.Context())
	require.NoError(t, err)
	ids := make([]string, len(list))
	for i, dk := range list {
		ids[i] = dk.ID
	}
	return ids
}

func (e *envelopeEnv) job(t *testing.T, ring *broker.Keyring, clock *fakeClock) *broker.RewrapJob {
	t.Helper()
	job, err := broker.NewRewrapJob(broker.RewrapConfig{Store: e.store, Keyring: ring, Now: clock.Now, Logger: slog.New(slog.DiscardHandler)})
	require.NoError(t, err)
	return job
}

// TestDataKeyRotationLeavesTheOldKeyOpeningNothing is the memory-exposure
// story. An attacker takes the plaintext data key from a replica's memory.
// Rotating the KMS key would only re-wrap that same data key; rotating the
// data key mints a new one, the re-wrap job moves every row to it, and
// once the grace period is over the old data key is deleted and zeroed in
// memory: the stolen key opens no stored row any more, while every user
// still gets their key.
func TestDataKeyRotationLeavesTheOldKeyOpeningNothing(t *testing.T) {
	ctx := context.Background()
	e := newEnvelopeEnv(t)
	e.kms.CreateKey(t, "kb")
	clock := newFakeClock()
	svc, ring := e.replica(t, broker.KeyringConfig{Now: clock.Now})
	oldID := ring.ActiveID()
	keys := map[string][]byte{}
	for u := range 12 {
		user := fmt.Sprintf("user-%02d", u)
		res, err := svc.Init(ctx, user, broker.RequestMeta{})
		require.NoError(t, err)
		keys[user] = res.MasterKey
	}

	// The exposure: the data key's plaintext leaks.
	stolen := e.dataKeyPlaintext(t, oldID)
	require.Len(t, opensWith(t, e.stolenRows(t), oldID, stolen), 12, "before rotation the stolen data key opens every row")
	oldKEK, err := ring.Lookup(oldID)
	require.NoError(t, err)

	// The response: a new data key.
	newID, minted, err := ring.RotateDataKey(ctx)
	require.NoError(t, err)
	require.True(t, minted)
	require.NotEqual(t, oldID, newID)
	require.Equal(t, newID, ring.ActiveID(), "new wraps use the new data key at once")
	res, err := svc.Init(ctx, "newcomer", broker.RequestMeta{})
	require.NoError(t, err)
	require.Equal(t, newID, res.KEKID)
	keys["newcomer"] = res.MasterKey

	job := e.job(t, ring, clock)
	run, err := job.Run(ctx)
	require.NoError(t, err)
	require.EqualValues(t, 12, run.Done, "the job moves every row to the new data key")
	require.Equal(t, newID, run.ActiveKEKID)
	require.Empty(t, run.DataKeysDeleted, "within the grace period the old data key stays")
	require.Equal(t, []string{oldID, newID}, e.dataKeyIDs(t))

	clock.Advance(broker.DefaultDataKeyGrace + time.Minute)
	run, err = job.Run(ctx)
	require.NoError(t, err)
	require.Equal(t, []string{oldID}, run.DataKeysDeleted)
	require.Equal(t, []string{newID}, e.dataKeyIDs(t))
	require.Equal(t, map[string]int64{newID: 13}, e.rowsUnder(t))

	// The stolen key opens nothing that is stored now.
	require.Empty(t, opensWith(t, e.stolenRows(t), oldID, stolen), "no stored row opens with the old data key")
	// The replica no longer holds it: its local KEK was zeroed.
	_, err = oldKEK.Unwrap(ctx, make([]byte, 60), nil)
	require.ErrorIs(t, err, localkek.ErrDestroyed)
	_, err = ring.Lookup(oldID)
	require.ErrorIs(t, err, broker.ErrUnknownKEK)

	// Every user still gets their key, here and on a fresh replica.
	svc2, _ := e.replica(t, broker.KeyringConfig{})
	for user, mk := range keys {
		for _, s := range []*broker.Service{svc, svc2} {
			got, err := s.Key(ctx, user, broker.RequestMeta{})
			require.NoError(t, err)
			require.Equal(t, mk, got.MasterKey)
			require.Equal(t, newID, got.KEKID)
		}
	}
}

// TestStaleReplicaNeverWritesUnderADeletedDataKey is the race of deletion
// against replicas that have not reloaded: replica B loaded the data keys
// before the rotation and has not reloaded since (its timer has not fired,
// or its reload failed). It wraps under the old data key until the job
// deletes it; after that, its writes are refused by the store and retried
// under the newest key, never stored under the deleted one; and when B
// cannot load the newest key (the KMS is down), the write fails rather
// than stores a row no key opens.
func TestStaleReplicaNeverWritesUnderADeletedDataKey(t *testing.T) {
	ctx := context.Background()
	e := newEnvelopeEnv(t)
	e.kms.CreateKey(t, "kb")
	clock := newFakeClock()
	svcA, ringA := e.replica(t, broker.KeyringConfig{Now: clock.Now})
	// B reloads on a miss only once an hour: it stays stale.
	svcB, ringB := e.replica(t, broker.KeyringConfig{RefreshMinInterval: time.Hour})
	oldID := ringA.ActiveID()
	require.Equal(t, oldID, ringB.ActiveID())
	for _, user := range []string{"alice", "bob", "zoe"} {
		_, err := svcA.Init(ctx, user, broker.RequestMeta{})
		require.NoError(t, err)
	}
	// zoe goes zero-knowledge; leaving it later re-wraps her key.
	zoe, err := svcA.Key(ctx, "zoe", broker.RequestMeta{})
	require.NoError(t, err)
	require.NoError(t, svcA.SetRecoveryWrap(ctx, "zoe", make([]byte, broker.RecoveryWrapSize), make([]byte, broker.RecoveryIVSize), nil, broker.RequestMeta{}))
	require.NoError(t, svcA.EnableZeroKnowledge(ctx, "zoe", nil, broker.RequestMeta{}))

	newID, _, err := ringA.RotateDataKey(ctx)
	require.NoError(t, err)
	job := e.job(t, ringA, clock)
	_, err = job.Run(ctx)
	require.NoError(t, err)

	// Within the grace period B still wraps under the old key: allowed,
	// the key exists, and the job's next run moves the row.
	res, err := svcB.Init(ctx, "early", broker.RequestMeta{})
	require.NoError(t, err)
	require.Equal(t, oldID, res.KEKID)
	staleKEK, err := ringB.Lookup(oldID)
	require.NoError(t, err)

	clock.Advance(broker.DefaultDataKeyGrace + time.Minute)
	run, err := job.Run(ctx)
	require.NoError(t, err)
	require.EqualValues(t, 1, run.Done, "the row B wrote under the old key moved")
	require.Equal(t, []string{oldID}, run.DataKeysDeleted)
	require.Equal(t, oldID, ringB.ActiveID(), "B has not reloaded: it would still wrap under the deleted key")

	// B writes: init, rotate, leave zero-knowledge. Each is refused under
	// the deleted key, B reloads, and each lands under the newest.
	carol, err := svcB.Init(ctx, "carol", broker.RequestMeta{})
	require.NoError(t, err)
	require.Equal(t, newID, carol.KEKID)
	require.Equal(t, newID, ringB.ActiveID(), "the refused write made B reload")
	_, err = staleKEK.Unwrap(ctx, make([]byte, 60), nil)
	require.ErrorIs(t, err, localkek.ErrDestroyed, "B's reload zeroed the deleted key")
	alice, err := svcB.Rotate(ctx, "alice", broker.RequestMeta{})
	require.NoError(t, err)
	require.Equal(t, newID, alice.KEKID)
	require.NoError(t, svcB.DisableZeroKnowledge(ctx, "zoe", zoe.MasterKey, broker.RequestMeta{}))
	require.Equal(t, map[string]int64{newID: 5}, e.rowsUnder(t), "no row names the deleted key")

	// C loads now, and goes stale in its turn: A rotates again, the job
	// moves the rows and deletes C's active key. When C's write is
	// refused, C cannot reach the KMS to load the newest key: the write
	// fails as unavailable instead of being stored under the deleted one.
	svcC, ringC := e.replica(t, broker.KeyringConfig{RefreshMinInterval: time.Hour})
	require.Equal(t, newID, ringC.ActiveID())
	latestID, _, err := ringA.RotateDataKey(ctx)
	require.NoError(t, err)
	first, err := job.Run(ctx)
	require.NoError(t, err)
	clock.Advance(broker.DefaultDataKeyGrace + time.Minute)
	run, err = job.Run(ctx)
	require.NoError(t, err)
	require.Equal(t, []string{newID}, append(first.DataKeysDeleted, run.DataKeysDeleted...))
	require.Equal(t, newID, ringC.ActiveID(), "C is stale")
	e.kms.Close()
	_, err = svcC.Init(ctx, "erin", broker.RequestMeta{})
	require.Error(t, err)
	require.True(t, broker.IsUnavailable(err), "a clear 503, not a row under a deleted key: %v", err)
	require.Equal(t, map[string]int64{latestID: 5}, e.rowsUnder(t))
}

// TestDataKeyMaxAgeMintsByItself: with a maximum age, the reload that
// finds the newest data key too old mints a new one, and the replicas
// that reload after it adopt that one rather than mint again.
func TestDataKeyMaxAgeMintsByItself(t *testing.T) {
	ctx := context.Background()
	e := newEnvelopeEnv(t)
	e.kms.CreateKey(t, "kb")
	clock := newFakeClock()
	const maxAge = 90 * 24 * time.Hour
	cfg := broker.KeyringConfig{DataKeyMaxAge: maxAge, Now: clock.Now}
	svc, ring := e.replica(t, cfg)
	first := ring.ActiveID()
	_, err := svc.Init(ctx, "alice", broker.RequestMeta{})
	require.NoError(t, err)

	clock.Advance(maxAge - time.Minute)
	require.NoError(t, ring.Refresh(ctx))
	require.Equal(t, first, ring.ActiveID(), "not old enough yet")
	require.Equal(t, []string{first}, e.dataKeyIDs(t))

	clock.Advance(time.Minute)
	require.NoError(t, ring.Refresh(ctx))
	second := ring.ActiveID()
	require.NotEqual(t, first, second, "the reload minted a new data key by itself")
	require.Equal(t, []string{first, second}, e.dataKeyIDs(t))
	res, err := svc.Init(ctx, "bob", broker.RequestMeta{})
	require.NoError(t, err)
	require.Equal(t, second, res.KEKID)

	// Another replica on the same clock loads the new key; a reload later
	// mints nothing more.
	_, ring2 := e.replica(t, cfg)
	require.Equal(t, second, ring2.ActiveID())
	clock.Advance(time.Hour)
	require.NoError(t, ring.Refresh(ctx))
	require.NoError(t, ring2.Refresh(ctx))
	require.Equal(t, []string{first, second}, e.dataKeyIDs(t))

	// The job then moves alice off the old key.
	run, err := e.job(t, ring, clock).Run(ctx)
	require.NoError(t, err)
	require.EqualValues(t, 1, run.Done)
	require.Equal(t, map[string]int64{second: 2}, e.rowsUnder(t))

	// Without a maximum age, nothing rotates by itself.
	_, ring3 := e.replica(t, broker.KeyringConfig{Now: clock.Now})
	clock.Advance(10 * maxAge)
	require.NoError(t, ring3.Refresh(ctx))
	require.Equal(t, second, ring3.ActiveID())
}

// TestReplicasPastMaxAgeMintOneDataKey: four replicas find the newest data
// key too old in the same instant and all try to mint. The store lets one
// insert; the others see its key on their reload and adopt it: one new
// data key, every replica wrapping under it.
func TestReplicasPastMaxAgeMintOneDataKey(t *testing.T) {
	ctx := context.Background()
	e := newEnvelopeEnv(t)
	e.kms.CreateKey(t, "kb")
	clock := newFakeClock()
	const maxAge = 24 * time.Hour
	rings := make([]*broker.Keyring, 4)
	for i := range rings {
		_, rings[i] = e.replica(t, broker.KeyringConfig{DataKeyMaxAge: maxAge, Now: clock.Now})
	}
	first := rings[0].ActiveID()
	clock.Advance(maxAge)

	start := make(chan struct{})
	errs := make(chan error, len(rings))
	for _, ring := range rings {
		go func() {
			<-start
			errs <- ring.Refresh(ctx)
		}()
	}
	close(start)
	for range rings {
		require.NoError(t, <-errs)
	}
	ids := e.dataKeyIDs(t)
	require.Len(t, ids, 2, "one new data key, not one per replica: %v", ids)
	require.Equal(t, first, ids[0])
	for _, ring := range rings {
		require.Equal(t, ids[1], ring.ActiveID(), "every replica wraps under the one new key")
	}
}

// TestRotateDataKeyConcurrently: two operators (or an operator and the
// max-age check) rotate at the same moment from the same newest key: one
// key is minted, and both calls report it.
func TestRotateDataKeyConcurrently(t *testing.T) {
	ctx := context.Background()
	e := newEnvelopeEnv(t)
	e.kms.CreateKey(t, "kb")
	_, ringA := e.replica(t, broker.KeyringConfig{})
	_, ringB := e.replica(t, broker.KeyringConfig{})
	first := ringA.ActiveID()
	type result struct {
		ring   *broker.Keyring
		id     string
		minted bool
		err    error
	}
	results := make(chan result, 2)
	start := make(chan struct{})
	for _, ring := range []*broker.Keyring{ringA, ringB} {
		go func() {
			<-start
			id, minted, err := ring.RotateDataKey(ctx)
			results <- result{ring, id, minted, err}
		}()
	}
	close(start)
	ids := func() []string { return e.dataKeyIDs(t) }
	minted := 0
	for range 2 {
		r := <-results
		require.NoError(t, r.err)
		all := ids()
		require.Contains(t, all, r.id)
		// The keyring wraps under the key the call reports, or under a
		// newer one: one after the other, the second call can store its
		// key between the first's insert and the first's reload.
		require.GreaterOrEqual(t, slices.Index(all, r.ring.ActiveID()), slices.Index(all, r.id),
			"the keyring wraps under a key older than the one the call reports: %v", all)
		if r.minted {
			minted++
		}
	}
	// At once, one call mints and the other reports its key; one after
	// the other, the second mints after the first's key. Either way no
	// key was minted twice or left unreported.
	all := ids()
	require.Equal(t, first, all[0])
	require.Equal(t, len(all)-1, minted)
}

// TestRotateDataKeyNeedsCachedMode: with a KEK that wraps user keys
// itself there is no data key to rotate.
func TestRotateDataKeyNeedsCachedMode(t *testing.T) {
	kek, err := localkek.New("env-v1", make([]byte, 32), true)
	require.NoError(t, err)
	ring, err := broker.NewKeyring(kek)
	require.NoError(t, err)
	_, _, err = ring.RotateDataKey(context.Background())
	require.ErrorIs(t, err, broker.ErrNotCachedMode)
}

// TestKMSKeyRotationAloneKeepsTheDataKey is why a suspected memory
// exposure calls for a data-key rotation: moving to a new KMS key (and
// disabling the old one) re-wraps the same data key, so the plaintext
// taken from memory still opens every row.
func TestKMSKeyRotationAloneKeepsTheDataKey(t *testing.T) {
	ctx := context.Background()
	e := newEnvelopeEnv(t)
	oldKey := e.kms.CreateKey(t, "kb")
	svc, ring := e.replica(t, broker.KeyringConfig{})
	for _, user := range []string{"alice", "bob"} {
		_, err := svc.Init(ctx, user, broker.RequestMeta{})
		require.NoError(t, err)
	}
	dataKeyID := ring.ActiveID()
	stolen := e.dataKeyPlaintext(t, dataKeyID)

	newRemote := e.awsKEK(t, "aws-2", e.kms.CreateKey(t, "kb-2"))
	oldRemote := e.awsKEK(t, "aws-1", localkms.Key{ARN: mustARN(t, e, "alias/kb")})
	_, ring2 := e.service(t, broker.KeyringConfig{Active: newRemote, DecryptOnly: []broker.KEK{oldRemote}, Cached: []string{"aws-2", "aws-1"}})
	require.Equal(t, dataKeyID, ring2.ActiveID(), "the new KMS key wraps the same data key")
	e.kms.DisableKey(t, oldKey.ID)
	require.Len(t, opensWith(t, e.stolenRows(t), dataKeyID, stolen), 2, "the stolen data key still opens every row")
}
