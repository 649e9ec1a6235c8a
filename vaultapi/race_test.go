package vaultapi_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/internal/faults"
)

// raceOp is one kind of request of the race tests, with the answers it
// may legitimately get while the others run.
type raceOp struct {
	name    string
	action  string // the audit action its row carries ("" for fetch: fetch or failed_fetch)
	allowed map[int]string
}

var (
	opInit    = raceOp{"init", "init", map[int]string{200: ""}}
	opRotate  = raceOp{"rotate", "rotate", map[int]string{200: "", 409: "ZK_ROTATE_FORBIDDEN"}}
	opKey     = raceOp{"key", "", map[int]string{200: ""}}
	opSetWrap = raceOp{"recovery-set", "recovery_set", map[int]string{200: "", 403: "KEY_PROOF_REQUIRED"}}
	// opSetProven sends the proof of the last key seen, which a rotation
	// may have made stale.
	opSetProven = raceOp{"recovery-set-proven", "recovery_set", map[int]string{200: "", 403: "KEY_PROOF_MISMATCH"}}
	opClearWrap = raceOp{"recovery-clear", "recovery_clear", map[int]string{200: "", 409: "ZK_ACTIVE"}}
	opZKOn      = raceOp{"zk-on", "zk_enable", map[int]string{200: "", 400: "RECOVERY_WRAP_MISSING"}}
	opZKOff     = raceOp{"zk-off", "zk_disable", map[int]string{200: "", 409: "MASTER_KEY_MISMATCH"}}
)

// raceRun is the shared state of one race: everything the server handed
// out, to check the final row against.
type raceRun struct {
	client *faults.Client
	token  string

	mu       sync.Mutex
	issued   map[string]bool // every MK (base64) a 200 of init or rotate returned
	wraps    map[string]bool // every recovery wrap (base64) sent
	latestMK []byte          // the last MK any response carried, for zk-off
	sent     map[string]int  // requests per audit action
	outcomes map[string]int  // "op status" counts, for the log
}

func (r *raceRun) do(ctx context.Context, op raceOp) error {
	var method, path string
	var body any
	switch op.name {
	case "init":
		method, path = http.MethodPost, "/init"
	case "rotate":
		method, path = http.MethodPost, "/rotate"
	case "key":
		method, path = http.MethodGet, "/key"
	case "recovery-set", "recovery-set-proven":
		wrap := make([]byte, broker.RecoveryWrapSize)
		rand.Read(wrap)
		w := base64.StdEncoding.EncodeToString(wrap)
		r.mu.Lock()
		r.wraps[w] = true
		fields := map[string]string{"recoveryWrappedMk": w, "recoveryIv": b64(12, 9)}
		if op.name == "recovery-set-proven" {
			fields["keyProof"] = base64.StdEncoding.EncodeToString(broker.KeyProof(r.latestMK))
		}
		r.mu.Unlock()
		method, path, body = http.MethodPost, "/recovery-wrap", fields
	case "recovery-clear":
		method, path = http.MethodDelete, "/recovery-wrap"
	case "zk-on":
		method, path, body = http.MethodPost, "/zero-knowledge", map[string]any{"enable": true}
	case "zk-off":
		r.mu.Lock()
		mk := base64.StdEncoding.EncodeToString(r.latestMK)
		r.mu.Unlock()
		method, path, body = http.MethodPost, "/zero-knowledge", map[string]any{"enable": false, "masterKey": mk}
	}
	res, err := r.client.Vault(ctx, method, path, r.token, body)
	if err != nil {
		return fmt.Errorf("%s: %w", op.name, err)
	}
	code, ok := op.allowed[res.Status]
	if !ok || code != res.Code() {
		return fmt.Errorf("%s answered %d: %s", op.name, res.Status, res.Raw)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.outcomes[fmt.Sprintf("%s %d", op.name, res.Status)]++
	action := op.action
	if action == "" {
		action = "fetch"
	}
	r.sent[action]++
	if res.Status != http.StatusOK {
		return nil
	}
	if mk := res.MasterKey(); mk != nil {
		r.latestMK = mk
		if op.name == "init" || op.name == "rotate" {
			r.issued[base64.StdEncoding.EncodeToString(mk)] = true
		}
	} else if op.name == "key" || op.name == "init" {
		// Never neither: a fetch that is not a key is the recovery blob.
		if res.Body["requiresRecoveryCode"] != true || !r.wraps[fmt.Sprint(res.Body["recoveryWrappedMk"])] {
			return fmt.Errorf("%s returned neither a key nor a recovery blob this test sent: %s", op.name, res.Raw)
		}
	}
	return nil
}

// runConcurrently runs ops on workers goroutines and returns the first
// error.
func (r *raceRun) runConcurrently(ctx context.Context, ops []raceOp, workers int) error {
	queue := make(chan raceOp, len(ops))
	for _, op := range ops {
		queue <- op
	}
	close(queue)
	var firstErr atomic.Pointer[error]
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for op := range queue {
				if err := r.do(ctx, op); err != nil {
					firstErr.CompareAndSwap(nil, &err)
				}
			}
		}()
	}
	wg.Wait()
	if p := firstErr.Load(); p != nil {
		return *p
	}
	return nil
}

// TestConcurrentOperationsOnOneUserKeepTheVaultConsistent races hundreds
// of init, rotate, recovery-wrap set and clear, zero-knowledge on and off
// and key fetches of one user through real HTTP on PostgreSQL. Every
// answer is one the API documents for that request, every fetch returns
// a key or the recovery blob (never neither), and afterwards the row
// satisfies the CHECK constraints, its key is one the server handed out
// (its key check value agrees), and the audit trail holds exactly one row
// per request, action by action.
func TestConcurrentOperationsOnOneUserKeepTheVaultConsistent(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	client := faults.NewClient(e.url)
	defer client.Close()
	run := &raceRun{client: client, token: e.token("racer"),
		issued: map[string]bool{}, wraps: map[string]bool{}, sent: map[string]int{}, outcomes: map[string]int{}}

	// Phase 1: the vault does not exist; inits and rotates race to create
	// it (both insert).
	var first []raceOp
	for i := range 24 {
		first = append(first, []raceOp{opInit, opRotate}[i%2])
	}
	require.NoError(t, run.runConcurrently(ctx, first, 24))
	require.Equal(t, 1, e.vaultCount("racer"))

	// Phase 2: everything at once, fetches included.
	mix := []raceOp{opKey, opRotate, opSetWrap, opZKOn, opKey, opClearWrap, opSetProven, opZKOff, opInit, opZKOn, opKey}
	var ops []raceOp
	for i := range 330 {
		ops = append(ops, mix[i%len(mix)])
	}
	require.NoError(t, run.runConcurrently(ctx, ops, 32))
	t.Logf("outcomes: %v", run.outcomes)

	// The row holds: constraints, and a key the server handed out.
	require.NoError(t, faults.CheckVaultConstraints(ctx, e.admin, schema))
	row := e.vaultRow("racer")
	final, err := client.Vault(ctx, http.MethodGet, "/key", run.token, nil)
	require.NoError(t, err)
	require.Equal(t, http.StatusOK, final.Status, final.Raw)
	run.sent["fetch"]++
	if mk := final.MasterKey(); mk != nil {
		require.True(t, run.issued[base64.StdEncoding.EncodeToString(mk)], "the final key was never handed out by init or rotate")
		require.Equal(t, broker.KeyCheckValue(mk), row["key_check"])
		require.Equal(t, false, row["zero_knowledge"])
	} else {
		require.Equal(t, true, final.Body["requiresRecoveryCode"], final.Raw)
		require.True(t, run.wraps[final.Body["recoveryWrappedMk"].(string)])
		require.Equal(t, true, row["zero_knowledge"])
		require.Nil(t, row["wrapped_mk"])
	}

	// One audit row per request, per action.
	got := map[string]int{}
	for _, a := range e.auditActions("racer") {
		action, _, _ := bytes.Cut([]byte(a), []byte(":"))
		name := string(action)
		if name == "failed_fetch" {
			name = "fetch"
		}
		got[name]++
	}
	require.Equal(t, run.sent, got, "audit rows per action differ from the requests sent")
}
