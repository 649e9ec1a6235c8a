package broker_test

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/client"
	"github.com/keybroker/keybroker/internal/testkit/pgtest"
	"github.com/keybroker/keybroker/kekproviders/localkek"
	"github.com/keybroker/keybroker/migrations"
	"github.com/keybroker/keybroker/pgstore"
	"github.com/keybroker/keybroker/sqlitestore"
)

// The attacks on a zero-knowledge vault's only wrap, played with a bearer
// token's powers (the Service's user operations) on both stores: the
// behaviour lives in the domain and must not depend on the store.

// proofEnv is a Service over one store.
type proofEnv struct {
	store broker.Store
	svc   *broker.Service
}

// eachStore runs fn on the embedded store and on PostgreSQL, with a
// Service of the given recovery proof policy.
func eachStore(t *testing.T, policy broker.RecoveryProofPolicy, fn func(t *testing.T, e *proofEnv)) {
	t.Helper()
	eachStoreConfig(t, func(cfg *broker.Config) { cfg.RecoveryProof = policy }, fn)
}

// eachStoreConfig runs fn on the embedded store and on PostgreSQL, with
// a Service whose configuration configure adjusts.
func eachStoreConfig(t *testing.T, configure func(cfg *broker.Config), fn func(t *testing.T, e *proofEnv)) {
	t.Helper()
	stores := map[string]func(t *testing.T) broker.Store{
		"SQLite": func(t *testing.T) broker.Store {
			s, err := sqlitestore.Open(t.Context(), sqlitestore.Config{Dir: t.TempDir()})
			require.NoError(t, err)
			t.Cleanup(func() { _ = s.Close() })
			return s
		},
		"PostgreSQL": func(t *testing.T) broker.Store {
			pool := pgtest.NewPool(t, pgtest.NewDatabase(t))
			_, err := migrations.Apply(t.Context(), pool, "keybroker")
			require.NoError(t, err)
			s, err := pgstore.New(t.Context(), pgstore.Config{Pool: pool, Schema: "keybroker"})
			require.NoError(t, err)
			return s
		},
	}
	for name, open := range stores {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			store := open(t)
			key := make([]byte, localkek.KeySize)
			rand.Read(key)
			kek, err := localkek.New("env-v1", key, false)
			require.NoError(t, err)
			ring, err := broker.NewKeyring(kek)
			require.NoError(t, err)
			cfg := broker.Config{Store: store, Keyring: ring}
			configure(&cfg)
			svc, err := broker.New(t.Context(), cfg)
			require.NoError(t, err)
			fn(t, &proofEnv{store: store, svc: svc})
		})
	}
}

var noMeta = broker.RequestMeta{}

func (e *proofEnv) vault(t *testing.T, userID string) *broker.Vault {
	t.Helper()
	var v *broker.Vault
	require.NoError(t, e.store.InUserTx(t.Context(), userID, func(tx broker.Tx) error {
		var err error
		v, err = tx.VaultGet(t.Context(), false)
		return err
	}))
	return v
}

func (e *proofEnv) put(t *testing.T, v *broker.Vault) {
	t.Helper()
	require.NoError(t, e.store.InUserTx(t.Context(), v.UserID, func(tx broker.Tx) error {
		if _, err := tx.VaultGet(t.Context(), true); err == nil {
			return tx.VaultUpdate(t.Context(), v)
		}
		inserted, err := tx.VaultInsert(t.Context(), v)
		require.True(t, inserted)
		return err
	}))
}

// audit returns the user's audit rows as "action:status:context".
func (e *proofEnv) audit(t *testing.T, userID string) []string {
	t.Helper()
	page, err := e.svc.AuditPage(t.Context(), userID, "", broker.MaxAuditPageSize)
	require.NoError(t, err)
	var out []string
	for _, a := range page.Entries {
		out = append(out, string(a.Action)+":"+strconv.Itoa(a.Status)+":"+a.Context)
	}
	return out
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// recoveryWrap is a real recovery wrap of mk, as the browser builds it.
type recoveryWrap struct {
	secret, wrapped, iv []byte
}

func newRecoveryWrap(t *testing.T, mk []byte) recoveryWrap {
	t.Helper()
	secret, _ := client.NewRecoveryCode()
	wrapped, iv, err := client.WrapWithRecovery(mk, secret)
	require.NoError(t, err)
	return recoveryWrap{secret: secret, wrapped: wrapped, iv: iv}
}

// opensTo opens the vault's current recovery blob (GET /key) with w's
// secret and returns the key, or fails the test.
func (e *proofEnv) opensTo(t *testing.T, userID string, w recoveryWrap) []byte {
	t.Helper()
	res, err := e.svc.Key(t.Context(), userID, noMeta)
	require.NoError(t, err)
	require.True(t, res.RequiresRecoveryCode, "the vault must be in zero-knowledge mode")
	wrapped, err := base64.StdEncoding.DecodeString(res.RecoveryWrappedMK)
	require.NoError(t, err)
	iv, err := base64.StdEncoding.DecodeString(res.RecoveryIV)
	require.NoError(t, err)
	mk, err := client.UnwrapWithRecovery(wrapped, iv, w.secret)
	require.NoError(t, err, "the recovery code no longer opens the vault's recovery wrap")
	return mk
}

// zkVault makes userID's vault as a user would with keybroker: init, a
// recovery wrap with the key's proof, zero-knowledge on.
func (e *proofEnv) zkVault(t *testing.T, userID string) ([]byte, recoveryWrap) {
	t.Helper()
	ctx := t.Context()
	res, err := e.svc.Init(ctx, userID, noMeta)
	require.NoError(t, err)
	mk := res.MasterKey
	w := newRecoveryWrap(t, mk)
	require.NoError(t, e.svc.SetRecoveryWrap(ctx, userID, w.wrapped, w.iv, broker.KeyProof(mk), noMeta))
	require.NoError(t, e.svc.EnableZeroKnowledge(ctx, userID, nil, noMeta))
	return mk, w
}

func TestKeyProofKnownAnswer(t *testing.T) {
	t.Parallel()
	mk := make([]byte, 32)
	for i := range mk {
		mk[i] = byte(i)
	}
	// HMAC-SHA256(key = 00 01 … 1f, "keybroker key possession proof v1"),
	// computed independently (Python's hmac module).
	require.Equal(t, "52062bf27dacbea8bca68e2f4e46036f5ceb742a6f3a8cbbd22ebf9e0a2103bd", hex.EncodeToString(broker.KeyProof(mk)))
	require.Equal(t, client.KeyProof(mk), broker.KeyProof(mk), "the Go client computes the same proof")
	require.NotEqual(t, broker.KeyCheckValue(mk), base64.StdEncoding.EncodeToString(broker.KeyProof(mk)), "the proof is not the key check value")
}

// TestZeroKnowledgeRecoveryWrapNeedsKeyProof is the stolen-token attack
// on a vault keybroker made zero-knowledge: replacing its only wrap with
// garbage, with no proof, a wrong one, or what a database reader can
// read (the key check value, the proof's stored hash), is refused and
// audited, and nothing changes; the legitimate client's proof works.
func TestZeroKnowledgeRecoveryWrapNeedsKeyProof(t *testing.T) {
	t.Parallel()
	eachStore(t, broker.RecoveryProofRequired, func(t *testing.T, e *proofEnv) {
		ctx := t.Context()
		mk, w := e.zkVault(t, "alice")
		before := e.vault(t, "alice")
		require.NotNil(t, before.KeyCheck)
		require.NotNil(t, before.KeyProof)
		require.Nil(t, before.Restorable)

		garbage, garbageIV := randomBytes(broker.RecoveryWrapSize), randomBytes(broker.RecoveryIVSize)
		err := e.svc.SetRecoveryWrap(ctx, "alice", garbage, garbageIV, nil, noMeta)
		require.ErrorIs(t, err, broker.ErrKeyProofRequired)

		// What a database reader knows: the key check value and the hash
		// of the proof, each 32 bytes, sent as proofs; and a wrong key's.
		kcv, err := base64.StdEncoding.DecodeString(*before.KeyCheck)
		require.NoError(t, err)
		hashB64, _, _ := strings.Cut(*before.KeyProof, ":")
		hash, err := base64.StdEncoding.DecodeString(hashB64)
		require.NoError(t, err)
		for name, proof := range map[string][]byte{
			"random": randomBytes(broker.KeyProofSize), "key check value": kcv, "stored hash": hash,
			"another key's proof": broker.KeyProof(randomBytes(32)),
		} {
			err := e.svc.SetRecoveryWrap(ctx, "alice", garbage, garbageIV, proof, noMeta)
			require.ErrorIs(t, err, broker.ErrKeyProofMismatch, name)
		}
		require.ErrorIs(t, e.svc.SetRecoveryWrap(ctx, "alice", garbage, garbageIV, randomBytes(31), noMeta), broker.ErrInvalidArgument)
		require.ErrorIs(t, e.svc.EnableZeroKnowledge(ctx, "alice", hash, noMeta), broker.ErrKeyProofMismatch)
		// The rest of a token's powers on a zero-knowledge vault.
		require.ErrorIs(t, e.svc.ClearRecoveryWrap(ctx, "alice", noMeta), broker.ErrZKActive)
		_, err = e.svc.Rotate(ctx, "alice", noMeta)
		require.ErrorIs(t, err, broker.ErrZKRotateForbidden)
		require.ErrorIs(t, e.svc.DisableZeroKnowledge(ctx, "alice", randomBytes(32), noMeta), broker.ErrMasterKeyMismatch)

		require.Equal(t, before, e.vault(t, "alice"), "a refused request changes nothing")
		require.Equal(t, mk, e.opensTo(t, "alice", w))
		trail := e.audit(t, "alice")
		require.Contains(t, trail, "recovery_set:403:key-proof-required")
		require.Contains(t, trail, "recovery_set:403:key-proof-mismatch")
		require.Contains(t, trail, "zk_enable:403:key-proof-mismatch")

		// The user, who unlocked the vault with the recovery code, holds
		// the key and replaces the wrap.
		next := newRecoveryWrap(t, mk)
		require.NoError(t, e.svc.SetRecoveryWrap(ctx, "alice", next.wrapped, next.iv, broker.KeyProof(mk), noMeta))
		require.Equal(t, mk, e.opensTo(t, "alice", next))
		after := e.vault(t, "alice")
		require.Nil(t, after.Restorable, "a proven replacement keeps nothing")
		require.Equal(t, before.KeyProof, after.KeyProof)
		require.Contains(t, e.audit(t, "alice"), "recovery_set:200:key-proof")
	})
}

// TestAdoptedZeroKnowledgeVaultCannotLoseItsWrap plays every token-only
// sequence that destroyed a zero-knowledge row of the original service
// (no key check value, so nothing the server can verify): garbage
// replacements, a random key to leave zero-knowledge mode, a rotation, a
// clear. Afterwards the operator restores the first wrap, and the user's
// recovery code opens it to their key.
func TestAdoptedZeroKnowledgeVaultCannotLoseItsWrap(t *testing.T) {
	t.Parallel()
	eachStore(t, broker.RecoveryProofRequired, func(t *testing.T, e *proofEnv) {
		ctx := t.Context()
		mk := randomBytes(32)
		w := newRecoveryWrap(t, mk)
		setAt := time.Date(2025, 3, 4, 5, 6, 7, 0, time.UTC)
		e.put(t, &broker.Vault{UserID: "adopted", FormatVersion: broker.FormatLegacy, KEKID: "env-v1", CreatedAt: setAt,
			RecoveryWrappedMK: ptr(base64.StdEncoding.EncodeToString(w.wrapped)), RecoveryIV: ptr(base64.StdEncoding.EncodeToString(w.iv)),
			RecoveryFormatVersion: 1, RecoverySetAt: &setAt, ZeroKnowledge: true})

		garbage := func() ([]byte, []byte) {
			return randomBytes(broker.RecoveryWrapSize), randomBytes(broker.RecoveryIVSize)
		}
		for _, proof := range [][]byte{nil, randomBytes(broker.KeyProofSize), nil} {
			g, iv := garbage()
			require.NoError(t, e.svc.SetRecoveryWrap(ctx, "adopted", g, iv, proof, noMeta), "nothing to check the proof against")
		}
		require.NoError(t, e.svc.DisableZeroKnowledge(ctx, "adopted", randomBytes(32), noMeta))
		_, err := e.svc.Rotate(ctx, "adopted", noMeta)
		require.NoError(t, err)
		g, iv := garbage()
		require.NoError(t, e.svc.SetRecoveryWrap(ctx, "adopted", g, iv, nil, noMeta))
		require.NoError(t, e.svc.ClearRecoveryWrap(ctx, "adopted", noMeta))
		g, iv = garbage()
		require.NoError(t, e.svc.SetRecoveryWrap(ctx, "adopted", g, iv, nil, noMeta))

		// The row holds no wrap the code opens; the restore slot does.
		v := e.vault(t, "adopted")
		require.False(t, v.ZeroKnowledge)
		require.NotEqual(t, base64.StdEncoding.EncodeToString(w.wrapped), *v.RecoveryWrappedMK)
		require.NotNil(t, v.Restorable)
		require.Equal(t, base64.StdEncoding.EncodeToString(w.wrapped), v.Restorable.WrappedMK, "the first wrap is kept, not a later garbage one")
		meta, err := e.svc.VaultMeta(ctx, "adopted")
		require.NoError(t, err)
		require.True(t, meta.HasRestorableRecoveryWrap)
		require.NotNil(t, meta.RestorableTakenAt)
		trail := e.audit(t, "adopted")
		require.Equal(t, "recovery_set:200:unverifiable;restorable-kept", trail[0])
		require.Equal(t, "recovery_set:200:unverifiable;restorable-held", trail[1])
		require.Contains(t, trail, "zk_disable:200:unverifiable;restorable-held")

		res, err := e.svc.RestoreRecoveryWrap(ctx, "adopted", broker.RequestMeta{UserAgent: "operator"})
		require.NoError(t, err)
		require.True(t, res.ServerWrapDropped)
		require.True(t, setAt.Equal(*res.RecoverySetAt))
		require.Equal(t, mk, e.opensTo(t, "adopted", w), "the user's recovery code opens their key again")
		v = e.vault(t, "adopted")
		require.True(t, v.ZeroKnowledge)
		require.Nil(t, v.WrappedMK)
		require.Nil(t, v.KeyCheck, "the restored wrap comes back with its own (absent) key check value")
		require.Nil(t, v.KeyProof)
		require.Nil(t, v.Restorable)
		require.Contains(t, e.audit(t, "adopted"), "recovery_restore:200:server-wrap-dropped")

		// Nothing left to restore; the slot protects the next round too.
		_, err = e.svc.RestoreRecoveryWrap(ctx, "adopted", noMeta)
		require.ErrorIs(t, err, broker.ErrNoRestorableWrap)
		_, err = e.svc.DiscardRestorableRecoveryWrap(ctx, "adopted", noMeta)
		require.ErrorIs(t, err, broker.ErrNoRestorableWrap)
		_, err = e.svc.RestoreRecoveryWrap(ctx, "nobody", noMeta)
		require.ErrorIs(t, err, broker.ErrNotFound)
		g, iv = garbage()
		require.NoError(t, e.svc.SetRecoveryWrap(ctx, "adopted", g, iv, nil, noMeta))
		require.NotNil(t, e.vault(t, "adopted").Restorable)
		_, err = broker.DiscardRestorableRecoveryWrap(ctx, e.store, "adopted", noMeta)
		require.NoError(t, err)
		require.Nil(t, e.vault(t, "adopted").Restorable)
		trail = e.audit(t, "adopted")
		require.Equal(t, "recovery_discard:200:", trail[len(trail)-1])
		require.Contains(t, trail, "recovery_restore:404:nothing-restorable")
	})
}

// TestRecoveryProofOptionalKeepsReplacedWrapRestorable: the switch for
// clients that cannot send the proof yet accepts a replacement without
// it, but keeps the replaced wrap for the operator, and still refuses a
// wrong proof.
func TestRecoveryProofOptionalKeepsReplacedWrapRestorable(t *testing.T) {
	t.Parallel()
	eachStore(t, broker.RecoveryProofOptional, func(t *testing.T, e *proofEnv) {
		ctx := t.Context()
		mk, w := e.zkVault(t, "bob")
		before := e.vault(t, "bob")
		for range 2 {
			require.NoError(t, e.svc.SetRecoveryWrap(ctx, "bob", randomBytes(48), randomBytes(12), nil, noMeta))
		}
		require.ErrorIs(t, e.svc.SetRecoveryWrap(ctx, "bob", randomBytes(48), randomBytes(12), randomBytes(32), noMeta), broker.ErrKeyProofMismatch)
		trail := e.audit(t, "bob")
		require.Equal(t, []string{"recovery_set:200:unproven;restorable-kept", "recovery_set:200:unproven;restorable-held", "recovery_set:403:key-proof-mismatch"}, trail[len(trail)-3:])

		_, err := e.svc.RestoreRecoveryWrap(ctx, "bob", noMeta)
		require.NoError(t, err)
		require.Equal(t, mk, e.opensTo(t, "bob", w))
		after := e.vault(t, "bob")
		require.Equal(t, before.KeyCheck, after.KeyCheck)
		require.Equal(t, before.KeyProof, after.KeyProof, "the verifier comes back with its wrap: the proof works again")
		next := newRecoveryWrap(t, mk)
		require.NoError(t, e.svc.SetRecoveryWrap(ctx, "bob", next.wrapped, next.iv, broker.KeyProof(mk), noMeta))
		require.Nil(t, e.vault(t, "bob").Restorable)
	})
}

// TestStaleProofVerifierIsIgnored: during a rolling upgrade the previous
// release rotates a key without knowing key_proof, which then names the
// old key check value. The new release treats it as absent — a correct
// proof of the new key is accepted and recorded, and a zero-knowledge
// replacement is then checked against the new key's verifier.
func TestStaleProofVerifierIsIgnored(t *testing.T) {
	t.Parallel()
	eachStore(t, broker.RecoveryProofRequired, func(t *testing.T, e *proofEnv) {
		ctx := t.Context()
		_, err := e.svc.Init(ctx, "carol", noMeta)
		require.NoError(t, err)
		stale := e.vault(t, "carol").KeyProof
		res, err := e.svc.Rotate(ctx, "carol", noMeta)
		require.NoError(t, err)
		mk := res.MasterKey
		v := e.vault(t, "carol")
		v.KeyProof = stale // what the previous release's rotation leaves
		e.put(t, v)

		w := newRecoveryWrap(t, mk)
		require.NoError(t, e.svc.SetRecoveryWrap(ctx, "carol", w.wrapped, w.iv, broker.KeyProof(mk), noMeta))
		require.NotEqual(t, *stale, *e.vault(t, "carol").KeyProof, "the new key's verifier is recorded")
		require.NoError(t, e.svc.EnableZeroKnowledge(ctx, "carol", broker.KeyProof(mk), noMeta))
		require.ErrorIs(t, e.svc.SetRecoveryWrap(ctx, "carol", randomBytes(48), randomBytes(12), nil, noMeta), broker.ErrKeyProofRequired)
		next := newRecoveryWrap(t, mk)
		require.NoError(t, e.svc.SetRecoveryWrap(ctx, "carol", next.wrapped, next.iv, broker.KeyProof(mk), noMeta))
		require.Equal(t, mk, e.opensTo(t, "carol", next))

		// A stale verifier on a standard row is recomputed when the row
		// goes zero-knowledge, too.
		_, err = e.svc.Init(ctx, "dave", noMeta)
		require.NoError(t, err)
		daveStale := e.vault(t, "dave").KeyProof
		res, err = e.svc.Rotate(ctx, "dave", noMeta)
		require.NoError(t, err)
		v = e.vault(t, "dave")
		v.KeyProof = daveStale
		e.put(t, v)
		dw := newRecoveryWrap(t, res.MasterKey)
		require.NoError(t, e.svc.SetRecoveryWrap(ctx, "dave", dw.wrapped, dw.iv, nil, noMeta))
		require.NoError(t, e.svc.EnableZeroKnowledge(ctx, "dave", nil, noMeta))
		require.NoError(t, e.svc.SetRecoveryWrap(ctx, "dave", dw.wrapped, dw.iv, broker.KeyProof(res.MasterKey), noMeta))
		require.ErrorIs(t, e.svc.SetRecoveryWrap(ctx, "dave", dw.wrapped, dw.iv, nil, noMeta), broker.ErrKeyProofRequired)
	})
}

// TestStandardModeChecksAProofItIsSent: without a verifier (a row of the
// original service) a proof sent in standard mode is checked against the
// key the server wrap opens to, and its verifier recorded.
func TestStandardModeChecksAProofItIsSent(t *testing.T) {
	t.Parallel()
	eachStore(t, broker.RecoveryProofRequired, func(t *testing.T, e *proofEnv) {
		ctx := t.Context()
		res, err := e.svc.Init(ctx, "erin", noMeta)
		require.NoError(t, err)
		mk := res.MasterKey
		v := e.vault(t, "erin")
		v.KeyCheck, v.KeyProof = nil, nil // as the original service left it
		e.put(t, v)
		w := newRecoveryWrap(t, mk)
		require.ErrorIs(t, e.svc.SetRecoveryWrap(ctx, "erin", w.wrapped, w.iv, broker.KeyProof(randomBytes(32)), noMeta), broker.ErrKeyProofMismatch)
		require.Nil(t, e.vault(t, "erin").RecoveryWrappedMK)
		require.NoError(t, e.svc.SetRecoveryWrap(ctx, "erin", w.wrapped, w.iv, broker.KeyProof(mk), noMeta))
		v = e.vault(t, "erin")
		require.Equal(t, broker.KeyCheckValue(mk), *v.KeyCheck)
		require.NotNil(t, v.KeyProof)
		// Without a proof, standard mode needs none.
		require.NoError(t, e.svc.SetRecoveryWrap(ctx, "erin", w.wrapped, w.iv, nil, noMeta))
	})
}

func TestRecoveryProofPolicy(t *testing.T) {
	t.Parallel()
	for _, s := range []string{"required", "optional"} {
		p, err := broker.ParseRecoveryProofPolicy(s)
		require.NoError(t, err)
		require.Equal(t, s, string(p))
	}
	for _, s := range []string{"", "Required", "off", "true"} {
		_, err := broker.ParseRecoveryProofPolicy(s)
		require.Error(t, err, s)
	}
	store, err := sqlitestore.Open(t.Context(), sqlitestore.Config{Dir: t.TempDir()})
	require.NoError(t, err)
	t.Cleanup(func() { _ = store.Close() })
	kek, err := localkek.New("k", make([]byte, 32), true)
	require.NoError(t, err)
	ring, err := broker.NewKeyring(kek)
	require.NoError(t, err)
	_, err = broker.New(context.Background(), broker.Config{Store: store, Keyring: ring, RecoveryProof: "sometimes"})
	require.ErrorContains(t, err, "Config.RecoveryProof")
}

func ptr[T any](v T) *T { return &v }

// TestPreReleaseZeroKnowledgeRowKeepsWrapRestorable: a vault that went
// zero-knowledge before verifiers existed has a key check value but no
// verifier. A replacement cannot be checked, so the first wrap is kept;
// leaving zero-knowledge mode is still checked against the key check
// value.
func TestPreReleaseZeroKnowledgeRowKeepsWrapRestorable(t *testing.T) {
	t.Parallel()
	eachStore(t, broker.RecoveryProofRequired, func(t *testing.T, e *proofEnv) {
		ctx := t.Context()
		mk, w := e.zkVault(t, "frank")
		v := e.vault(t, "frank")
		v.KeyProof = nil // as the previous release left it
		e.put(t, v)

		require.NoError(t, e.svc.SetRecoveryWrap(ctx, "frank", randomBytes(48), randomBytes(12), nil, noMeta))
		require.NoError(t, e.svc.SetRecoveryWrap(ctx, "frank", randomBytes(48), randomBytes(12), broker.KeyProof(mk), noMeta))
		require.ErrorIs(t, e.svc.DisableZeroKnowledge(ctx, "frank", randomBytes(32), noMeta), broker.ErrMasterKeyMismatch)
		kept := e.vault(t, "frank").Restorable
		require.NotNil(t, kept)
		require.Equal(t, base64.StdEncoding.EncodeToString(w.wrapped), kept.WrappedMK)
		require.Equal(t, v.KeyCheck, kept.KeyCheck)

		res, err := e.svc.RestoreRecoveryWrap(ctx, "frank", noMeta)
		require.NoError(t, err)
		require.False(t, res.ServerWrapDropped)
		require.Equal(t, mk, e.opensTo(t, "frank", w))
		// Leaving and entering zero-knowledge mode with the key makes
		// the vault verifiable.
		require.NoError(t, e.svc.DisableZeroKnowledge(ctx, "frank", mk, noMeta))
		require.NoError(t, e.svc.EnableZeroKnowledge(ctx, "frank", nil, noMeta))
		require.ErrorIs(t, e.svc.SetRecoveryWrap(ctx, "frank", randomBytes(48), randomBytes(12), nil, noMeta), broker.ErrKeyProofRequired)
	})
}
