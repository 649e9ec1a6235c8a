package broker_test

import (
	"encoding/base64"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/grant"
	"github.com/keybroker/keybroker/internal/testkit/testvectors"
)

// grantKeys are the recipients of the grant tests: the upstream's test
// key as the default, and a post-quantum worker.
type grantKeys struct {
	upstream   *grant.PrivateKey
	pq         *grant.PrivateKey
	recipients *grant.Recipients
}

func newGrantKeys(t *testing.T) *grantKeys {
	t.Helper()
	vectors := testvectors.LoadGrant(t)
	upstream, err := grant.ParsePrivateKey([]byte(vectors.RSAOAEP.PrivateKeyPEM))
	require.NoError(t, err)
	def, err := grant.ParseRecipient(grant.DefaultRecipient, []byte(vectors.RSAOAEP.PublicKeyPEM))
	require.NoError(t, err)
	pq, err := grant.GenerateKey(grant.HPKEMLKEM768X25519)
	require.NoError(t, err)
	pqRecipient, err := pq.Recipient("pq-worker")
	require.NoError(t, err)
	rs, err := grant.NewRecipients(def, pqRecipient)
	require.NoError(t, err)
	return &grantKeys{upstream: upstream, pq: pq, recipients: rs}
}

func grantRequest() broker.GrantRequest {
	return broker.GrantRequest{MissionID: "mission-abc", Tables: []string{"tasks", "notes"}, RecordIDs: []string{"tasks:t1", "notes:n1"}}
}

// grantEvents records OnGrant.
type grantEvents struct {
	mu     sync.Mutex
	events []broker.GrantEvent
}

func (g *grantEvents) observe(e broker.GrantEvent) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.events = append(g.events, e)
}

func (g *grantEvents) all() []broker.GrantEvent {
	g.mu.Lock()
	defer g.mu.Unlock()
	return append([]broker.GrantEvent(nil), g.events...)
}

// TestGrantDerivesFromTheVaultAndAuditsWithoutTheKey: on both stores, a
// grant to the default recipient opens with the upstream's key to the
// mission data key of the user's master key; a named one opens only
// under its terms. The audit row says what was granted to whom — and
// holds neither key nor the wrap.
func TestGrantDerivesFromTheVaultAndAuditsWithoutTheKey(t *testing.T) {
	t.Parallel()
	keys := newGrantKeys(t)
	events := &grantEvents{}
	t.Cleanup(func() { // after both stores' subtests, which run in parallel
		for _, ev := range events.all() {
			require.Equal(t, broker.OutcomeOK, ev.Outcome)
		}
		require.Len(t, events.all(), 4, "two grants on each store")
	})
	eachStoreConfig(t, func(cfg *broker.Config) {
		cfg.GrantRecipients = keys.recipients
		cfg.OnGrant = events.observe
	}, func(t *testing.T, e *proofEnv) {
		res, err := e.svc.Init(t.Context(), "alice", noMeta)
		require.NoError(t, err)
		mk := res.MasterKey
		d, err := grant.NewDerivation("mission-abc", []string{"notes", "tasks"}, []string{"notes:n1", "tasks:t1"})
		require.NoError(t, err)
		want, err := grant.DeriveKey(mk, d)
		require.NoError(t, err)

		before := time.Now()
		g, err := e.svc.Grant(t.Context(), "alice", grantRequest(), broker.RequestMeta{IPAddress: "192.0.2.7", UserAgent: "mission-ui"})
		require.NoError(t, err)
		require.False(t, g.Bound)
		require.Equal(t, grant.DefaultRecipient, g.Recipient)
		require.Equal(t, grant.RSAOAEP256, g.Algorithm)
		require.Equal(t, d, g.Terms.Derivation, "sorted as the browser sorts")
		require.WithinDuration(t, before, g.Terms.IssuedAt, time.Minute)
		require.Equal(t, grant.DefaultTTL, g.Terms.ExpiresAt.Sub(g.Terms.IssuedAt))
		mdk, err := keys.upstream.UnwrapUnbound(g.WrappedKey)
		require.NoError(t, err)
		require.Equal(t, want, mdk)

		req := grantRequest()
		req.Recipient = "pq-worker"
		ttl := float64(2 * time.Hour / time.Millisecond)
		req.TTLMillis = &ttl
		named, err := e.svc.Grant(t.Context(), "alice", req, noMeta)
		require.NoError(t, err)
		require.True(t, named.Bound)
		require.Equal(t, grant.HPKEMLKEM768X25519, named.Algorithm)
		require.Equal(t, 2*time.Hour, named.Terms.ExpiresAt.Sub(named.Terms.IssuedAt))
		mdk, err = keys.pq.Unwrap(named.WrappedKey, "pq-worker", named.Terms)
		require.NoError(t, err)
		require.Equal(t, want, mdk)

		rows := e.audit(t, "alice")
		require.Len(t, rows, 3)
		for i, row := range rows[1:] {
			require.True(t, strings.HasPrefix(row, "mission_grant:200:recipient="), row)
			require.Contains(t, row, ";scope="+d.ScopeDigestString()+";tables=2;records=2;")
			require.True(t, strings.HasSuffix(row, ";mission=mission-abc"), row)
			g := []*broker.GrantResult{g, named}[i]
			for _, secret := range [][]byte{mk, want, g.WrappedKey} {
				require.NotContains(t, row, base64.StdEncoding.EncodeToString(secret))
				require.NotContains(t, row, base64.RawURLEncoding.EncodeToString(secret))
			}
		}
		require.Contains(t, rows[1], "recipient=default;algorithm=rsa-oaep-256;")
		require.Contains(t, rows[2], "recipient=pq-worker;algorithm=hpke-mlkem768-x25519;")

		meta, err := e.svc.VaultMeta(t.Context(), "alice")
		require.NoError(t, err)
		require.False(t, meta.GrantsTruncated)
		require.Equal(t, []broker.GrantRecord{
			{MissionID: "mission-abc", Recipient: "pq-worker", Algorithm: grant.HPKEMLKEM768X25519, ScopeDigest: d.ScopeDigestString(),
				Tables: 2, Records: 2, IssuedAt: named.Terms.IssuedAt, ExpiresAt: named.Terms.ExpiresAt},
			{MissionID: "mission-abc", Recipient: "default", Algorithm: grant.RSAOAEP256, ScopeDigest: d.ScopeDigestString(),
				Tables: 2, Records: 2, IssuedAt: g.Terms.IssuedAt, ExpiresAt: g.Terms.ExpiresAt},
		}, utcRecords(meta.Grants), "the export lists the grants issued, newest first")
	})
}

func utcRecords(in []broker.GrantRecord) []broker.GrantRecord {
	out := make([]broker.GrantRecord, len(in))
	for i, r := range in {
		r.IssuedAt, r.ExpiresAt = r.IssuedAt.UTC(), r.ExpiresAt.UTC()
		out[i] = r
	}
	return out
}

// TestGrantRefusalsAreAuditedAndListNoGrant: each refusal is the
// domain's outcome, audited with the mission and recipient it named, and
// none shows as an issued grant in the export. A scope the contract
// refuses never reaches the vault.
func TestGrantRefusalsAreAuditedAndListNoGrant(t *testing.T) {
	t.Parallel()
	keys := newGrantKeys(t)
	events := &grantEvents{}
	t.Cleanup(func() { // after both stores' subtests, which run in parallel
		outcomes := map[broker.Outcome]int{}
		for _, ev := range events.all() {
			outcomes[ev.Outcome]++
		}
		require.Equal(t, map[broker.Outcome]int{
			broker.OutcomeNotFound: 2, broker.OutcomeGrantRecipient: 2, broker.OutcomeInvalidArgument: 4, broker.OutcomeGrantZeroKnowledge: 2,
		}, outcomes, "every refusal is reported by its reason")
	})
	eachStoreConfig(t, func(cfg *broker.Config) {
		cfg.GrantRecipients = keys.recipients
		cfg.OnGrant = events.observe
	}, func(t *testing.T, e *proofEnv) {
		_, err := e.svc.Grant(t.Context(), "nobody", grantRequest(), noMeta)
		require.ErrorIs(t, err, broker.ErrNotFound)
		require.Equal(t, []string{"mission_grant:404:no-vault;recipient=default;mission=mission-abc"}, e.audit(t, "nobody"))

		req := grantRequest()
		req.Recipient = "not-configured"
		_, err = e.svc.Grant(t.Context(), "nobody", req, noMeta)
		require.ErrorIs(t, err, broker.ErrGrantRecipientUnknown)
		require.Equal(t, broker.OutcomeGrantRecipient, broker.OutcomeOf(err))

		req = grantRequest()
		req.Tables = []string{"notes"} // tasks:t1 names a table not granted
		_, err = e.svc.Grant(t.Context(), "nobody", req, noMeta)
		require.ErrorIs(t, err, broker.ErrInvalidArgument)
		var input *grant.InputError
		require.True(t, errors.As(err, &input))
		require.Contains(t, input.Error(), `names table "tasks"`)
		req = grantRequest()
		req.Recipient = "Not A Name"
		_, err = e.svc.Grant(t.Context(), "nobody", req, noMeta)
		require.ErrorIs(t, err, broker.ErrInvalidArgument)
		require.Len(t, e.audit(t, "nobody"), 2, "invalid requests write no row")

		// Zero-knowledge: the server holds no key to derive from.
		res, err := e.svc.Init(t.Context(), "zoe", noMeta)
		require.NoError(t, err)
		w := newRecoveryWrap(t, res.MasterKey)
		require.NoError(t, e.svc.SetRecoveryWrap(t.Context(), "zoe", w.wrapped, w.iv, nil, noMeta))
		require.NoError(t, e.svc.EnableZeroKnowledge(t.Context(), "zoe", nil, noMeta))
		_, err = e.svc.Grant(t.Context(), "zoe", grantRequest(), noMeta)
		require.ErrorIs(t, err, broker.ErrGrantZeroKnowledge)
		require.Equal(t, 409, broker.OutcomeOf(err).AuditStatus())
		rows := e.audit(t, "zoe")
		require.Equal(t, "mission_grant:409:zk-active;recipient=default;mission=mission-abc", rows[len(rows)-1])

		meta, err := e.svc.VaultMeta(t.Context(), "zoe")
		require.NoError(t, err)
		require.Empty(t, meta.Grants)
	})
}

// TestGrantWithoutRecipientsIsNotConfigured: with no public key the
// grant is refused (the upstream's 503) and audited; with only named
// recipients an unnamed request is refused the same way.
func TestGrantWithoutRecipientsIsNotConfigured(t *testing.T) {
	t.Parallel()
	keys := newGrantKeys(t)
	pq, _ := keys.recipients.Lookup("pq-worker")
	onlyNamed, err := grant.NewRecipients(pq)
	require.NoError(t, err)
	for name, rs := range map[string]*grant.Recipients{"None": nil, "OnlyNamed": onlyNamed} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			eachStoreConfig(t, func(cfg *broker.Config) { cfg.GrantRecipients = rs }, func(t *testing.T, e *proofEnv) {
				_, err := e.svc.Init(t.Context(), "alice", noMeta)
				require.NoError(t, err)
				_, err = e.svc.Grant(t.Context(), "alice", grantRequest(), noMeta)
				require.ErrorIs(t, err, broker.ErrGrantNotConfigured)
				require.Equal(t, 503, broker.OutcomeOf(err).AuditStatus())
				rows := e.audit(t, "alice")
				require.Equal(t, "mission_grant:503:not-configured;recipient=default;mission=mission-abc", rows[len(rows)-1])
			})
		})
	}
}

// TestGrantOfAVaultWithAnotherUsersWrap is the row writer's attack: with
// SQL access, paste bob's server wrap into alice's row and ask for a
// grant as alice, hoping to receive a mission key derived from bob's
// master key. The wrap is bound to bob's row: nothing is derived, the
// failure is audited, and no grant is listed.
func TestGrantOfAVaultWithAnotherUsersWrap(t *testing.T) {
	t.Parallel()
	keys := newGrantKeys(t)
	eachStoreConfig(t, func(cfg *broker.Config) { cfg.GrantRecipients = keys.recipients }, func(t *testing.T, e *proofEnv) {
		_, err := e.svc.Init(t.Context(), "alice", noMeta)
		require.NoError(t, err)
		_, err = e.svc.Init(t.Context(), "bob", noMeta)
		require.NoError(t, err)
		alice, bob := e.vault(t, "alice"), e.vault(t, "bob")
		alice.WrappedMK, alice.KeyCheck, alice.KeyProof = bob.WrappedMK, bob.KeyCheck, bob.KeyProof
		e.put(t, alice)

		g, err := e.svc.Grant(t.Context(), "alice", grantRequest(), noMeta)
		require.Error(t, err)
		require.Nil(t, g)
		require.Equal(t, broker.OutcomeInternal, broker.OutcomeOf(err))
		rows := e.audit(t, "alice")
		require.Equal(t, "failed_fetch:500:unwrap-failed", rows[len(rows)-1])
		meta, err := e.svc.VaultMeta(t.Context(), "alice")
		require.NoError(t, err)
		require.Empty(t, meta.Grants)
	})
}
