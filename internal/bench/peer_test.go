package bench

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"
)

// peerTitle is the rows of the peer an operator would otherwise run: one
// Vault or OpenBao Transit decrypt per login.
const peerTitle = "peer: Vault/OpenBao Transit decrypt"

// targetPeerRatio bounds the comparison with the peer at the same
// concurrency (throughput at least) and the same pace (p99 at most).
const targetPeerRatio = 1.0

// peer is a Vault or OpenBao server with a Transit key, driven by the
// same generator as keybroker: KEYBROKER_BENCH_PEER_URL (http://…),
// KEYBROKER_BENCH_PEER_TOKEN and KEYBROKER_BENCH_PEER_KEY (default
// "bench"); docs/benchmarks.md sets one up with a file audit device.
type peer struct {
	url, token, key string
	body            []byte // {"ciphertext": …} of a 32-byte key, as keybroker holds one per user
	note            string // what is known of its audit devices
}

// peerFromEnv returns the configured peer, or nil and why there is none.
func peerFromEnv(ctx context.Context) (*peer, string, error) {
	url := os.Getenv("KEYBROKER_BENCH_PEER_URL")
	if url == "" {
		return nil, peerTitle + ": not run (set KEYBROKER_BENCH_PEER_URL, _TOKEN and _KEY to a Vault or OpenBao with a Transit key and a file audit device: docs/benchmarks.md)", nil
	}
	key := os.Getenv("KEYBROKER_BENCH_PEER_KEY")
	if key == "" {
		key = "bench"
	}
	p, err := newPeer(ctx, url, os.Getenv("KEYBROKER_BENCH_PEER_TOKEN"), key)
	return p, "", err
}

// newPeer encrypts a fresh 32-byte key under the Transit key, for the
// decrypts to come, and looks at the audit devices.
func newPeer(ctx context.Context, url, token, key string) (*peer, error) {
	p := &peer{url: strings.TrimRight(url, "/"), token: token, key: key}
	plain := make([]byte, 32)
	_, _ = rand.Read(plain)
	var enc struct {
		Data struct {
			Ciphertext string `json:"ciphertext"`
		} `json:"data"`
	}
	status, err := p.call(ctx, http.MethodPost, "/v1/transit/encrypt/"+key, map[string]string{"plaintext": base64.StdEncoding.EncodeToString(plain)}, &enc)
	if err != nil || status != http.StatusOK || enc.Data.Ciphertext == "" {
		return nil, fmt.Errorf("peer: encrypt under transit/keys/%s: HTTP %d, %v", key, status, err)
	}
	if p.body, err = json.Marshal(map[string]string{"ciphertext": enc.Data.Ciphertext}); err != nil {
		return nil, err
	}
	var audit map[string]struct {
		Type string `json:"type"`
	}
	status, err = p.call(ctx, http.MethodGet, "/v1/sys/audit", nil, &audit)
	switch {
	case err != nil || status != http.StatusOK:
		p.note = "audit devices not checked"
	case !hasFileAudit(audit):
		return nil, fmt.Errorf("peer: no file audit device (sys/audit): keybroker writes a durable audit row per fetch; enable one (docs/benchmarks.md)")
	default:
		p.note = "file audit device"
	}
	return p, nil
}

func hasFileAudit(devices map[string]struct {
	Type string `json:"type"`
}) bool {
	for _, d := range devices {
		if d.Type == "file" {
			return true
		}
	}
	return false
}

// call sends one request to the peer's API and decodes its answer.
func (p *peer) call(ctx context.Context, method, path string, body, out any) (int, error) {
	var r io.Reader
	if body != nil {
		raw, err := json.Marshal(body)
		if err != nil {
			return 0, err
		}
		r = bytes.NewReader(raw)
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, p.url+path, r)
	if err != nil {
		return 0, err
	}
	req.Header.Set("X-Vault-Token", p.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return resp.StatusCode, nil
	}
	return resp.StatusCode, json.NewDecoder(resp.Body).Decode(out)
}

// load is the peer's step: its decrypt, from the same generator.
func (p *peer) load(conns int, rate float64, warmup, duration time.Duration) Load {
	return Load{URL: p.url + "/v1/transit/decrypt/" + p.key, Tokens: []string{p.token}, Concurrency: conns, Rate: rate,
		Warmup: warmup, Duration: duration, Method: http.MethodPost, TokenHeader: "X-Vault-Token", Body: p.body}
}

// peerStep measures the peer right after the env-KEK step at the same
// concurrency (closed loop) or the same pace, with the same workers.
func (b *bench) peerStep(conns int, rate float64) {
	res, err := Run(context.Background(), b.peer.load(conns, rate, b.s.warmup, b.s.duration))
	if err != nil {
		b.t.Fatalf("peer step: %v", err)
	}
	row := &Row{Config: peerTitle, Concurrency: conns, Rate: rate, Result: res, KMSCalls: -1, Note: b.peer.note}
	if rate > 0 {
		b.rows = append(b.rows, row)
	} else {
		b.mergeRow(row)
	}
	if res.Errors > 0 {
		b.t.Logf("%s, %d conns: %d errors, first: %s", peerTitle, conns, res.Errors, res.FirstError)
	}
	b.t.Logf("%-45s %4d conns @ %.0f/s: %8.0f req/s   p50 %s  p99 %s  p99.9 %s",
		peerTitle, conns, rate, res.RPS(), ms(res.Percentile(50)), ms(res.Percentile(99)), ms(res.Percentile(99.9)))
}

// peerTargets renders keybroker (PostgreSQL + env KEK) against the peer:
// throughput at each concurrency, p99 at each pace.
func (b *bench) peerTargets() string {
	env := rowTitles[rowPGEnv]
	var out strings.Builder
	var parts []string
	for _, c := range b.s.conns {
		r, p := b.closedRow(env, c), b.closedRow(peerTitle, c)
		if r == nil || p == nil || p.Result.RPS() == 0 {
			continue
		}
		ratio := r.Result.RPS() / p.Result.RPS()
		parts = append(parts, fmt.Sprintf("%d conns %.2f× (%s)", c, ratio, verdict(ratio >= targetPeerRatio)))
	}
	if len(parts) > 0 {
		fmt.Fprintf(&out, "- PostgreSQL + env KEK at least %.1f× the peer (%s) at the same concurrency: %s\n", targetPeerRatio, peerTitle, strings.Join(parts, ", "))
	}
	parts = parts[:0]
	for _, r := range b.rows {
		if r.Config != env || r.Rate == 0 {
			continue
		}
		p := b.pacedRow(peerTitle, r.Rate)
		if p == nil || p.Result.Percentile(99) == 0 {
			continue
		}
		ratio := float64(r.Result.Percentile(99)) / float64(p.Result.Percentile(99))
		parts = append(parts, fmt.Sprintf("%.0f req/s %s against %s: %.2f× (%s)", r.Rate, ms(r.Result.Percentile(99)), ms(p.Result.Percentile(99)),
			ratio, verdict(ratio <= targetPeerRatio && r.Result.Errors == 0)))
	}
	if len(parts) > 0 {
		fmt.Fprintf(&out, "- PostgreSQL + env KEK p99 at most %.1f× the peer's at the same pace (%d workers each): %s\n", targetPeerRatio, pacedConcurrency, strings.Join(parts, "; "))
	}
	return out.String()
}
