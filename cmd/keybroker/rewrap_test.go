package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/internal/jwtissuer"
	"github.com/keybroker/keybroker/internal/testkit/kmstest/localkms"
	"github.com/keybroker/keybroker/internal/testkit/pgtest"
	"github.com/keybroker/keybroker/kekproviders/localkek"
	"github.com/keybroker/keybroker/pgstore"
)

// rotationDB is a migrated database with rows wrapped by an old KEK held
// in $OLD_KEK (id env-v1), and a new KEK in $NEW_KEK (id env-v2).
type rotationDB struct {
	env   map[string]string
	admin *pgxpool.Pool
	keys  map[string][]byte // each user's master key
	old   *localkek.KEK
	next  *localkek.KEK
}

func newKEKMaterial(t *testing.T, id string) (string, *localkek.KEK) {
	t.Helper()
	raw := make([]byte, 32)
	rand.Read(raw)
	kek, err := localkek.New(id, raw, false)
	require.NoError(t, err)
	return base64.StdEncoding.EncodeToString(raw), kek
}

func newRotationDB(t *testing.T, users, legacy int) *rotationDB {
	t.Helper()
	oldB64, old := newKEKMaterial(t, "env-v1")
	newB64, next := newKEKMaterial(t, "env-v2")
	role, adminURL := pgtest.NewPlainDatabase(t)
	db := &rotationDB{
		env: map[string]string{
			"DATABASE_URL":          role.URL,
			"OLD_KEK":               oldB64,
			"NEW_KEK":               newB64,
			"KEYBROKER_KEK":         "env://NEW_KEK?id=env-v2",
			"KEYBROKER_KEK_RETIRED": "env://OLD_KEK?id=env-v1",
			"KEYBROKER_LOG_LEVEL":   "warn",
		},
		admin: pgtest.NewPool(t, adminURL),
		keys:  map[string][]byte{},
		old:   old,
		next:  next,
	}
	require.NoError(t, run(t.Context(), []string{"migrate"}, envFunc(db.env), io.Discard, io.Discard, nil))
	if legacy > 0 {
		// A fresh schema starts with format 1 closed: the owner reopens it
		// to import the original service's rows (docs/rotation.md).
		pgtest.ReopenFormat1(t, db.admin, "keybroker")
	}
	var rows [][]any
	for i := range users + legacy {
		user := fmt.Sprintf("user-%04d", i)
		mk := make([]byte, 32)
		rand.Read(mk)
		db.keys[user] = mk
		format := broker.FormatBound
		var binding map[string]string
		if i >= users {
			format = broker.FormatLegacy
		} else {
			binding = broker.BindingContext(user, "env-v1", format)
		}
		wrapped, err := old.Wrap(t.Context(), mk, binding)
		require.NoError(t, err)
		wrappedMK, iv := base64.StdEncoding.EncodeToString(wrapped), ""
		if format == broker.FormatLegacy {
			iv, wrappedMK = base64.StdEncoding.EncodeToString(wrapped[:12]), base64.StdEncoding.EncodeToString(wrapped[12:])
		}
		rows = append(rows, []any{user, wrappedMK, iv, format, "env-v1"})
	}
	_, err := db.admin.CopyFrom(t.Context(), pgx.Identifier{"keybroker", "encryption_vaults"},
		[]string{"user_id", "wrapped_mk", "wrap_iv", "format_version", "kek_id"}, pgx.CopyFromRows(rows))
	require.NoError(t, err)
	return db
}

// requireAllMoved opens every user's key through a service that knows
// only the new KEK, and checks one kek_rewrap audit row per user.
func (db *rotationDB) requireAllMoved(t *testing.T) {
	t.Helper()
	ctx := t.Context()
	pool := pgtest.NewPool(t, db.env["DATABASE_URL"])
	store, err := pgstore.New(ctx, pgstore.Config{Pool: pool, Schema: "keybroker"})
	require.NoError(t, err)
	ring, err := broker.NewKeyring(db.next)
	require.NoError(t, err)
	svc, err := broker.New(ctx, broker.Config{Store: store, Keyring: ring})
	require.NoError(t, err)
	for user, mk := range db.keys {
		res, err := svc.Key(ctx, user, broker.RequestMeta{})
		require.NoError(t, err, user)
		require.Equal(t, mk, res.MasterKey, user)
	}
	var users, audits int
	require.NoError(t, db.admin.QueryRow(ctx, `SELECT count(DISTINCT user_id), count(*) FROM keybroker.encryption_vault_audit WHERE action = 'kek_rewrap'`).Scan(&users, &audits))
	require.Equal(t, len(db.keys), users)
	require.Equal(t, len(db.keys), audits, "each row moved exactly once")
}

func (db *rotationDB) kekStatus(t *testing.T) string {
	t.Helper()
	var out bytes.Buffer
	require.NoError(t, run(t.Context(), []string{"kek", "status"}, envFunc(db.env), &out, io.Discard, nil))
	return out.String()
}

func TestRewrapCommand(t *testing.T) {
	t.Parallel()
	db := newRotationDB(t, 30, 10)
	require.Contains(t, db.kekStatus(t), "env-v1", "before")

	var out, errOut bytes.Buffer
	require.NoError(t, run(t.Context(), []string{"rewrap", "--dry-run", "--batch", "7"}, envFunc(db.env), &out, &errOut, nil))
	require.Contains(t, out.String(), "would move 40 rows to KEK env-v2")
	var onOld int
	require.NoError(t, db.admin.QueryRow(t.Context(), `SELECT count(*) FROM keybroker.encryption_vaults WHERE kek_id = 'env-v1'`).Scan(&onOld))
	require.Equal(t, 40, onOld, "a dry run writes nothing")

	out.Reset()
	errOut.Reset()
	require.NoError(t, run(t.Context(), []string{"rewrap", "--batch", "7", "--progress-every", "0"}, envFunc(db.env), &out, &errOut, nil))
	require.Contains(t, out.String(), "moved 40 rows to KEK env-v2 (format 2); 0 skipped (changed by their user meanwhile), 0 failed")
	// Not a terminal: plain progress lines, one per batch here.
	lines := strings.Split(strings.TrimSpace(errOut.String()), "\n")
	require.GreaterOrEqual(t, len(lines), 6)
	require.Regexp(t, `^rewrap: 100\.0%  40/40 rows re-wrapped  [0-9,]+ rows/s  ETA --$`, lines[len(lines)-1])
	require.NotContains(t, errOut.String(), "\r", "no bar redraws off a terminal")
	db.requireAllMoved(t)

	status := db.kekStatus(t)
	require.Regexp(t, `env-v2\s+2\s+40\s+100\.0%\s+active`, status)
	require.Regexp(t, `env-v1\s+-\s+0\s+0\.0%\s+decrypt-only: no rows left, it can be removed`, status)
	require.Contains(t, status, "re-wrap job: not running; the last run, by ")
	require.Contains(t, status, "finished at")

	out.Reset()
	require.NoError(t, run(t.Context(), []string{"rewrap"}, envFunc(db.env), &out, io.Discard, nil))
	require.Contains(t, out.String(), "moved 0 rows")
}

// TestRewrapMovesFormat1FirstAndCloses: while format-1 rows are left,
// kek status counts them and says format 1 is open; the job moves every
// one of them before any other row (their user ids sort after the
// others'), then closes format 1, and kek status says since when and by
// whom.
func TestRewrapMovesFormat1FirstAndCloses(t *testing.T) {
	t.Parallel()
	db := newRotationDB(t, 30, 10)
	require.Contains(t, db.kekStatus(t), "format 1: OPEN, 10 rows left; the re-wrap job upgrades them first, then closes format 1 for good")

	var out bytes.Buffer
	require.NoError(t, run(t.Context(), []string{"rewrap", "--batch", "4"}, envFunc(db.env), &out, io.Discard, nil))
	require.Contains(t, out.String(), "moved 40 rows to KEK env-v2")
	require.Contains(t, out.String(), "no format-1 row is left: format 1 is now closed for good")
	db.requireAllMoved(t)

	// The job's audit rows carry the time each move was prepared.
	var lastLegacy, firstOther time.Time
	require.NoError(t, db.admin.QueryRow(t.Context(), `SELECT
    max(created_at) FILTER (WHERE context LIKE 'env-v1/1>%'), min(created_at) FILTER (WHERE context LIKE 'env-v1/2>%')
FROM keybroker.encryption_vault_audit WHERE action = 'kek_rewrap'`).Scan(&lastLegacy, &firstOther))
	require.True(t, lastLegacy.Before(firstOther), "format-1 rows moved first: last at %s, first other at %s", lastLegacy, firstOther)

	status := db.kekStatus(t)
	require.Regexp(t, `format 1: closed since \d{4}-\d\d-\d\d \d\d:\d\d:\d\d by \S+ pid \d+ \(keybroker rewrap\): a format-1 wrap no longer opens\n`, status)
}

func TestRewrapCommandReportsRowsItCannotMove(t *testing.T) {
	t.Parallel()
	db := newRotationDB(t, 5, 0)
	pgtest.Exec(t, db.admin, `UPDATE keybroker.encryption_vaults SET kek_id = 'lost' WHERE user_id = 'user-0003'`)
	var out bytes.Buffer
	err := run(t.Context(), []string{"rewrap"}, envFunc(db.env), &out, io.Discard, nil)
	require.ErrorContains(t, err, "1 rows could not be moved")
	require.Contains(t, out.String(), "moved 4 rows")
	require.Contains(t, out.String(), `not moved: user user-0003, KEK lost: unknown KEK id "lost"`)
	require.Contains(t, db.kekStatus(t), "NOT CONFIGURED: these rows do not open")
}

func TestPrintKEKStatusWhileRunning(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 3, 1, 12, 0, 10, 0, time.UTC)
	var out bytes.Buffer
	printKEKStatus(&out, []broker.KEKCount{
		{KEKID: "env-v1", FormatVersion: 1, Wrapped: true, Rows: 250},
		{KEKID: "env-v1", FormatVersion: 2, Wrapped: true, Rows: 750},
		{KEKID: "env-v1", FormatVersion: 2, ZeroKnowledge: true, Rows: 1000},
		{KEKID: "dk-7", FormatVersion: 2, Wrapped: true, Rows: 3000},
	}, map[string]string{"kms-1": "active", "env-v1": "decrypt-only", "dk-7": "data key wrapped by kms-1"}, &broker.RewrapState{
		Running: true, Runner: "host-a pid 7",
		RewrapProgress: broker.RewrapProgress{ActiveKEKID: "kms-1", Total: 4000, Done: 3000, StartedAt: now.Add(-10 * time.Second),
			UpdatedAt: now.Add(-time.Second), RowsPerSecond: 300},
	}, &broker.Format1State{}, now)
	got := out.String()
	require.Regexp(t, `env-v1\s+1\s+250\s+6\.2%\s+decrypt-only`, got)
	require.Regexp(t, `env-v1\s+2\s+750\s+18\.8%\s+decrypt-only`, got)
	require.Regexp(t, `dk-7\s+2\s+3,000\s+75\.0%\s+data key wrapped by kms-1`, got)
	require.Regexp(t, `kms-1\s+-\s+0\s+0\.0%\s+active`, got)
	require.Contains(t, got, "4,000 rows with a server wrap; 1,000 zero-knowledge rows (20.0% of all")
	require.Contains(t, got, "format 1: OPEN, 250 rows left; the re-wrap job upgrades them first, then closes format 1 for good")
	require.Contains(t, got, "re-wrap job: RUNNING on host-a pid 7")
	require.Contains(t, got, "3,000/4,000 rows, 0 skipped, 0 failed, 300 rows/s, ETA 3s (reported 1s ago)")
}

func TestPrintFormat1(t *testing.T) {
	t.Parallel()
	closed := &broker.Format1State{Closed: true, ClosedAt: time.Date(2026, 3, 1, 12, 0, 0, 0, time.Local), ClosedBy: "host-a pid 7"}
	for _, tc := range []struct {
		left int64
		st   *broker.Format1State
		want string
	}{
		{0, nil, ""},
		{3, nil, "format 1: 3 rows left; the re-wrap job upgrades them (whether format 1 is closed is not known)\n"},
		{1200, &broker.Format1State{}, "format 1: OPEN, 1,200 rows left; the re-wrap job upgrades them first, then closes format 1 for good\n"},
		{0, &broker.Format1State{}, "format 1: open, 0 rows left; the re-wrap job closes it for good at its next run\n"},
		{0, closed, "format 1: closed since 2026-03-01 12:00:00 by host-a pid 7: a format-1 wrap no longer opens\n"},
		{2, closed, "format 1: closed since 2026-03-01 12:00:00 by host-a pid 7: a format-1 wrap no longer opens; 2 rows in format 1 written since do NOT open (see docs/rotation.md)\n"},
	} {
		var out bytes.Buffer
		printFormat1(&out, tc.left, tc.st)
		require.Equal(t, tc.want, out.String())
	}
}

func TestFormatCount(t *testing.T) {
	t.Parallel()
	for n, want := range map[int64]string{0: "0", 999: "999", 1000: "1,000", 1234567: "1,234,567", -4500: "-4,500"} {
		require.Equal(t, want, formatCount(n))
	}
}

// TestServeRefusesToRetireAKEKWithRows: removing the old KEK before the
// job moved its rows would strand them; serve says how many and stops.
func TestServeRefusesToRetireAKEKWithRows(t *testing.T) {
	t.Parallel()
	db := newRotationDB(t, 3, 2)
	env := withServe(t, db.env)
	delete(env, "KEYBROKER_KEK_RETIRED")
	var logs syncBuffer
	err := run(t.Context(), []string{"serve"}, envFunc(env), io.Discard, &logs, nil)
	require.ErrorContains(t, err, `rows are still wrapped by KEKs that are not configured: "env-v1" (5 rows)`)
	require.ErrorContains(t, err, "KEYBROKER_KEK_RETIRED")
}

// withServe adds what serve needs beyond the store and the KEKs.
func withServe(t *testing.T, env map[string]string) map[string]string {
	t.Helper()
	issuer, err := jwtissuer.New("https://auth.test")
	require.NoError(t, err)
	jwks := httptest.NewServer(issuer.JWKSHandler())
	t.Cleanup(jwks.Close)
	out := map[string]string{
		"KEYBROKER_JWKS_URL":     jwks.URL,
		"KEYBROKER_JWT_ISSUER":   issuer.Issuer(),
		"KEYBROKER_JWT_AUDIENCE": issuer.Issuer(),
		"KEYBROKER_ADDR":         "127.0.0.1:0",
	}
	for k, v := range env {
		out[k] = v
	}
	return out
}

// TestServeRewrapsInTheBackground: two servers on one database, the job
// on by default: between them every row moves once, while the servers
// keep serving; with the job off a server leaves the rows alone.
func TestServeRewrapsInTheBackground(t *testing.T) {
	t.Parallel()
	db := newRotationDB(t, 60, 20)
	env := withServe(t, db.env)
	env["KEYBROKER_REWRAP_BATCH"] = "9"

	off := map[string]string{"KEYBROKER_REWRAP": "false", "KEYBROKER_LOG_LEVEL": "info"}
	for k, v := range env {
		if _, set := off[k]; !set {
			off[k] = v
		}
	}
	disabled := startServe(t, off, "serve")
	require.NoError(t, disabled.stop())
	require.Contains(t, disabled.logs.String(), "re-wrap job disabled")

	type result struct {
		res *broker.RewrapResult
		err error
	}
	results := make(chan result, 16)
	var servers []*server
	for range 2 {
		servers = append(servers, startServeWithHooks(t, env, &hooks{rewrapRun: func(res *broker.RewrapResult, err error) {
			select {
			case results <- result{res, err}:
			default:
			}
		}}))
	}
	// Each server runs once at start: one moves the rows, the other is
	// refused or finds nothing left.
	var moved int64
	for range 2 {
		select {
		case r := <-results:
			if r.err != nil {
				require.ErrorIs(t, r.err, broker.ErrRewrapBusy)
				continue
			}
			moved += r.res.Done
		case <-time.After(60 * time.Second):
			t.Fatal("no re-wrap run reported")
		}
	}
	require.EqualValues(t, 80, moved)
	for _, s := range servers {
		require.NoError(t, s.stop())
	}
	db.requireAllMoved(t)
}

// startServeWithHooks is startServe of "serve" with extra hooks.
func startServeWithHooks(t *testing.T, env map[string]string, h *hooks) *server {
	t.Helper()
	return startServeHooked(t, env, h, "serve")
}

// TestRewrapCommandKilledAndRestarted runs `keybroker rewrap` as a real
// process and SIGKILLs it at a random progress line, again and again,
// then lets it finish: every row must open and be moved exactly once.
func TestRewrapCommandKilledAndRestarted(t *testing.T) {
	t.Parallel()
	db := newRotationDB(t, 240, 60)
	seed := time.Now().UnixNano()
	t.Logf("random seed %d", seed)
	rng := mrand.New(mrand.NewPCG(uint64(seed), 0))
	args := []string{"rewrap", "--batch", "10", "--rate", "400", "--progress-every", "0"}
	killed := 0
	for attempt := 0; attempt < 6; attempt++ {
		cmd := helperProcess(t, db.env, args...)
		stderr, err := cmd.StderrPipe()
		require.NoError(t, err)
		require.NoError(t, cmd.Start())
		killAt := 1 + rng.IntN(4)
		lines := bufio.NewScanner(stderr)
		progress := 0
		for lines.Scan() {
			if strings.HasPrefix(lines.Text(), "rewrap: ") {
				if progress++; progress == killAt {
					require.NoError(t, cmd.Process.Kill())
					killed++
					break
				}
			}
		}
		_, _ = io.Copy(io.Discard, stderr)
		_ = cmd.Wait()
	}
	require.GreaterOrEqual(t, killed, 3)

	var out bytes.Buffer
	cmd := helperProcess(t, db.env, "rewrap")
	cmd.Stdout = &out
	require.NoError(t, cmd.Run(), out.String())
	require.Contains(t, out.String(), "0 failed")
	require.NotContains(t, out.String(), "moved 0 rows", "the kills left work for the last run")
	db.requireAllMoved(t)
}

// helperProcess returns this test binary set to run keybroker with args
// (see TestHelperProcessKeybroker) in env.
func helperProcess(t *testing.T, env map[string]string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^TestHelperProcessKeybroker$")
	cmd.Env = []string{"KEYBROKER_TEST_HELPER_ARGS=" + strings.Join(args, "\x1f"), "PATH=" + os.Getenv("PATH")}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	return cmd
}

// TestHelperProcessKeybroker is not a test: it is the keybroker command
// when helperProcess starts this binary.
func TestHelperProcessKeybroker(t *testing.T) {
	args := os.Getenv("KEYBROKER_TEST_HELPER_ARGS")
	if args == "" {
		t.Skip("runs only as a helper process")
	}
	err := run(context.Background(), strings.Split(args, "\x1f"), os.Getenv, os.Stdout, os.Stderr, nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, "keybroker:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

func TestKEKCheck(t *testing.T) {
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDLOCALKMS")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "local-kms-secret")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	kms := localkms.Start(t)
	good := kms.CreateKey(t, "good")
	bad := kms.CreateKey(t, "bad")
	uri := func(key localkms.Key, id string) string {
		return "awskms:///" + key.ID + "?id=" + id + "&region=" + localkms.Region + "&endpoint=" + url.QueryEscape(kms.URL) + "&max_attempts=1"
	}
	kekB64, _ := newKEKMaterial(t, "env-v1")
	env := map[string]string{
		"MANA_AUTH_KEK":         kekB64,
		"KEYBROKER_KEK":         uri(good, "aws-good"),
		"KEYBROKER_KEK_RETIRED": "env://MANA_AUTH_KEK",
	}
	var out bytes.Buffer
	require.NoError(t, run(t.Context(), []string{"kek", "check"}, envFunc(env), &out, io.Discard, nil))
	require.Regexp(t, `aws-good\s+active\s+ok\s+\S+s\s+\S+s\s+\S+s`, out.String(), "status, wrap and unwrap latencies")
	require.Regexp(t, `env-v1\s+decrypt-only\s+ok\s+\S+\s+\S+s\s+\S+s`, out.String())

	env["KEYBROKER_KEK_RETIRED"] += " " + uri(bad, "aws-bad")
	kms.DisableKey(t, bad.ID)
	out.Reset()
	err := run(t.Context(), []string{"kek", "check"}, envFunc(env), &out, io.Discard, nil)
	require.ErrorContains(t, err, "1 of 3 KEKs failed the check")
	require.Regexp(t, `aws-bad\s+decrypt-only\s+FAILED \(denied\)`, out.String())
}

// TestServeRefusesARewrapJobThatCannotRun: a re-wrap batch beyond the
// job's own limit used to pass serve's check and fail the job's, and
// serve kept running without its job, logging one line. Now it does not
// start, and says which setting and what range.
func TestServeRefusesARewrapJobThatCannotRun(t *testing.T) {
	t.Parallel()
	env := map[string]string{"KEYBROKER_DATA_DIR": t.TempDir(), "MANA_AUTH_KEK": base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32)),
		"KEYBROKER_JWKS_URL": "http://127.0.0.1:1/jwks", "KEYBROKER_JWT_ISSUER": "https://auth.test", "KEYBROKER_JWT_AUDIENCE": "https://auth.test",
		"KEYBROKER_ADDR": "127.0.0.1:0", "KEYBROKER_REWRAP_BATCH": "20000"}
	_, err := launchServe(t, env, &hooks{}, "serve")
	require.ErrorContains(t, err, `$KEYBROKER_REWRAP_BATCH (--rewrap-batch): "20000": want a whole number of rows between 1 and 10000`)
	_, err = launchServe(t, env, &hooks{}, "serve", "--rewrap-batch", "10001")
	require.ErrorContains(t, err, `$KEYBROKER_REWRAP_BATCH (--rewrap-batch): "10001"`)
}
