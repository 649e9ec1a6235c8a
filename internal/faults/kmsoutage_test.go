package faults_test

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/internal/faults"
	"github.com/keybroker/keybroker/internal/testkit/kmstest/localkms"
)

// TestKMSOutageCachedServesDirectRefuses stops the KMS (local-kms, AWS's
// API) under two `keybroker serve` processes on one database while
// requests flow: one with the KMS KEK in cached envelope mode (the
// default), one with cache=off. During the outage the cached server keeps
// serving keys and minting vaults and stays ready — its data keys are
// loaded, so taking it out of the load balancer would turn a KMS outage
// into a login outage; the direct server answers 503 KEK_UNAVAILABLE
// within the request timeout and its /readyz flips to not ready. When the
// KMS is back, the direct server serves and is ready again by itself, and
// every key is the one handed out before.
func TestKMSOutageCachedServesDirectRefuses(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	kms := faults.StartKMS(t)
	kms.CreateKey(t, "kb")
	dbURL, admin := sharedDatabase(t)
	iss := newIssuer(t)
	uri := "awskms:///alias/kb?id=aws-1&region=" + localkms.Region + "&endpoint=" + url.QueryEscape(kms.URL) + "&timeout=3s"
	aws := []string{"AWS_ACCESS_KEY_ID=AKIDLOCALKMS", "AWS_SECRET_ACCESS_KEY=local-kms-secret", "AWS_EC2_METADATA_DISABLED=true",
		// Two servers whose active KEKs differ (a data key, the KMS key)
		// would each re-wrap the other's rows to their own: the cached
		// user's row could end up a direct KMS wrap, which no cache serves
		// during the outage. One configuration per database outside a
		// rollout (docs/security.md); here the job stays off.
		"KEYBROKER_REWRAP=false"}
	bin := faults.Keybroker(t)
	cachedSrv := faults.StartServer(t, bin, serverEnv(dbURL, iss, append(aws, "KEYBROKER_KEK="+uri)...))
	directSrv := faults.StartServer(t, bin, serverEnv(dbURL, iss, append(aws, "KEYBROKER_KEK="+uri+"&cache=off")...))
	cached, direct := faults.NewClient(cachedSrv.URL), faults.NewClient(directSrv.URL)
	defer cached.Close()
	defer direct.Close()
	requireReady(t, ctx, cached, true)
	requireReady(t, ctx, direct, true)

	// One vault per mode, made while the KMS is up.
	keys := map[string][]byte{}
	for _, s := range []struct {
		c    *faults.Client
		user string
	}{{cached, "cached-user"}, {direct, "direct-user"}} {
		r := do(ctx, s.c, iss, t, "setup-"+s.user, s.user, "init", nil)
		require.NoError(t, r.err)
		require.Equal(t, http.StatusOK, r.status, r.code)
		keys[s.user] = r.mk
	}

	var phase atomic.Int32
	type sent struct {
		call
		server         string
		sentIn, doneIn int32
	}
	results := make(chan sent, 4096)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w, s := range []struct {
		name string
		c    *faults.Client
		user string
	}{{"cached", cached, "cached-user"}, {"cached", cached, "cached-user"}, {"direct", direct, "direct-user"}, {"direct", direct, "direct-user"}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 3000; i++ { // bounded; stopped long before
				select {
				case <-stop:
					return
				default:
				}
				op, user := "key", s.user
				if i%5 == 4 {
					op, user = "init", fmt.Sprintf("%s-new-%d-%d", s.name, w, i) // a fresh vault needs a wrap
				}
				before := phase.Load()
				c := do(ctx, s.c, iss, t, fmt.Sprintf("kms-%d-%d", w, i), user, op, nil)
				results <- sent{call: c, server: s.name, sentIn: before, doneIn: phase.Load()}
			}
		}()
	}

	var all []sent
	n := map[string]int{}
	ticker := time.NewTicker(100 * time.Millisecond) // paces the /readyz probes
	defer ticker.Stop()
	directNotReady, directReadyAgain, cachedReadyChecks := false, false, 0
	for phase.Load() != phaseRecovered || n["recovered-direct-ok"] < 20 || !directReadyAgain {
		select {
		case r := <-results:
			all = append(all, r)
			if r.sentIn == r.doneIn {
				key := fmt.Sprintf("%s-%s", map[int32]string{phaseUp: "up", phaseDown: "down", phaseRecovered: "recovered"}[r.sentIn], r.server)
				if r.err == nil && r.status == http.StatusOK {
					key += "-ok"
				}
				n[key]++
			}
		case <-ticker.C:
			switch phase.Load() {
			case phaseDown:
				if !directNotReady {
					directNotReady = !readyz(ctx, direct)
				} else {
					// The poller has seen the outage: the cached server,
					// polled as often, must still be ready.
					require.True(t, readyz(ctx, cached), "the cached server went not ready during a KMS outage while it serves")
					cachedReadyChecks++
				}
			case phaseRecovered:
				if !directReadyAgain {
					directReadyAgain = readyz(ctx, direct)
				}
			}
		case <-ctx.Done():
			t.Fatalf("the KMS outage test did not finish: phase %d, %v", phase.Load(), n)
		}
		switch phase.Load() {
		case phaseUp:
			if n["up-cached-ok"] >= 20 && n["up-direct-ok"] >= 20 {
				phase.Store(phaseStopping)
				kms.Stop(t)
				phase.Store(phaseDown)
			}
		case phaseDown:
			if directNotReady && cachedReadyChecks >= 5 && n["down-direct"] >= 10 && n["down-cached-ok"] >= 20 {
				phase.Store(phaseStarting)
				kms.Start(t)
				phase.Store(phaseRecovered)
			}
		}
	}
	close(stop)
	wg.Wait()
	close(results)
	for r := range results {
		all = append(all, r)
	}
	t.Logf("outcomes by phase and server: %v", n)

	for _, r := range all {
		require.NoError(t, r.err, "%s %s", r.op, r.id)
		require.Less(t, r.took, requestTimeout+2*time.Second, "%s %s on the %s server took %s", r.op, r.id, r.server, r.took)
		if r.server == "cached" || r.sentIn != phaseDown || r.doneIn != phaseDown {
			// The cached server never fails; around the transitions the
			// direct one may answer either way.
			if r.server == "cached" || r.status == http.StatusOK {
				require.Equal(t, http.StatusOK, r.status, "%s %s on the %s server: %d %s", r.op, r.id, r.server, r.status, r.code)
			} else {
				require.Equal(t, "KEK_UNAVAILABLE", r.code, "%s %s", r.op, r.id)
			}
		} else {
			require.Equal(t, http.StatusServiceUnavailable, r.status, "%s %s on the direct server while the KMS was down", r.op, r.id)
			require.Equal(t, "KEK_UNAVAILABLE", r.code, "%s %s", r.op, r.id)
		}
		if r.status == http.StatusOK && r.op == "key" {
			require.Equal(t, keys[r.user], r.mk, "%s %s returned another key", r.op, r.id)
		}
	}

	// The direct server's refusals were audited as failed fetches.
	audit := auditByAgent(t, ctx, admin)
	for _, r := range all {
		if r.server == "direct" && r.op == "key" && r.status == http.StatusServiceUnavailable {
			require.Equal(t, []string{"failed_fetch:503"}, audit[r.id], "%s", r.id)
		}
	}
	requireAcknowledgedAudited(t, callsOf(all, func(s sent) call { return s.call }), audit)
	require.NoError(t, faults.CheckVaultConstraints(ctx, admin, schema))
	requireLogsHoldNoSecrets(t, iss, callsOf(all, func(s sent) call { return s.call }), cachedSrv, directSrv)
}

func callsOf[T any](items []T, get func(T) call) []call {
	out := make([]call, len(items))
	for i, it := range items {
		out[i] = get(it)
	}
	return out
}
