package bench

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/internal/testkit/kmstest/faketransit"
)

// TestPeerStepDecryptsOnTransit: the peer's step drives real Transit
// decrypts (a server speaking Vault's protocol) of a key it encrypted
// first, every answer a 200; a peer without the token's access is refused
// before any step.
func TestPeerStepDecryptsOnTransit(t *testing.T) {
	t.Parallel()
	vault := faketransit.Start(t)
	vault.CreateKey(t, "bench", false)
	tok := vault.Token(faketransit.TokenOptions{})
	p, err := newPeer(t.Context(), vault.URL, tok, "bench")
	require.NoError(t, err)
	require.Equal(t, "audit devices not checked", p.note, "the fake has no sys/audit")
	res, err := Run(context.Background(), p.load(2, 0, 0, 300*time.Millisecond))
	require.NoError(t, err)
	require.Positive(t, res.OK)
	require.Zero(t, res.Errors, res.FirstError)
	require.GreaterOrEqual(t, vault.Requests(http.MethodPost+" /v1/transit/decrypt/bench"), res.OK)

	_, err = newPeer(t.Context(), vault.URL, "not-a-token", "bench")
	require.ErrorContains(t, err, "peer: encrypt under transit/keys/bench: HTTP 403")
}

// TestPeerRowsSitBesideKeybrokerAndReadAsRatios: the peer's rows follow
// keybroker's and the floor's at the same concurrency or pace, and the
// targets compare keybroker with the peer as ratios.
func TestPeerRowsSitBesideKeybrokerAndReadAsRatios(t *testing.T) {
	env := rowTitles[rowPGEnv]
	res := func(rps int, p99 time.Duration) *Result {
		return &Result{OK: rps, Elapsed: time.Second, Latencies: []time.Duration{p99}}
	}
	b := &bench{s: settings{conns: []int{16}}, halfPeak: map[string]float64{}, rows: []*Row{
		{Config: peerTitle, Concurrency: 64, Rate: 500, Result: res(500, 40*time.Millisecond)},
		{Config: peerTitle, Concurrency: 16, Result: res(4000, time.Millisecond)},
		{Config: floorTitle, Concurrency: 16, Result: res(3000, time.Millisecond)},
		{Config: env, Concurrency: 64, Rate: 500, Result: res(500, 10*time.Millisecond)},
		{Config: env, Concurrency: 16, Result: res(5000, time.Millisecond)},
	}}
	b.sortRows()
	var order []string
	for _, r := range b.rows {
		order = append(order, fmt.Sprintf("%s/%d/%.0f", r.Config, r.Concurrency, r.Rate))
	}
	require.Equal(t, []string{env + "/16/0", floorTitle + "/16/0", peerTitle + "/16/0", env + "/64/500", peerTitle + "/64/500"}, order)
	targets := b.targets()
	require.Contains(t, targets, "- PostgreSQL + env KEK at least 1.0× the peer ("+peerTitle+") at the same concurrency: 16 conns 1.25× (met)")
	require.Contains(t, targets, "- PostgreSQL + env KEK p99 at most 1.0× the peer's at the same pace (64 workers each): 500 req/s 10.00 ms against 40.00 ms: 0.25× (met)")
}
