package bench

import (
	"bytes"
	"context"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/internal/testkit/pgtest"
	"github.com/keybroker/keybroker/kekproviders"
	"github.com/keybroker/keybroker/pgstore"
)

// scaleSealInterval is the scale servers' KEYBROKER_AUDIT_SEAL_INTERVAL.
// Their sealer runs once at start, on an empty table, and not again
// within a run: a sealer ticking while the fill commits its rows (hours
// at full size) would seal windows that filled rows, stamped in the past,
// land in afterwards, and the first checkpoint would start after rows
// committed later — which audit verify rightly reports. The bench seals
// the filled rows once, after the fill, as a server's sealer does.
const scaleSealInterval = "24h"

// scaleVerify is the sealing of the filled rows and one `audit verify`.
type scaleVerify struct {
	sealTook, verifyTook time.Duration
	checkpoints          int
	verified, late       int64 // from verify's summary
}

// sealAndVerify seals every row of the filled database with the server's
// audit key (the bench's KEK opens it from the database, as serve does)
// through broker.SealAudit, the sealer's own call, then runs
// `keybroker audit verify` on it and times both. It asserts that verify
// found nothing and accounted for every row: the filled ones, which carry
// no MAC, as sealed late, and the users' POST /init rows as verified.
func (srv *scaleServer) sealAndVerify(auditRows int64) scaleVerify {
	t := srv.t
	ctx := context.Background()
	store, err := pgstore.New(ctx, pgstore.Config{Pool: pgtest.NewPool(t, srv.url), Schema: "keybroker"})
	require.NoError(t, err)
	kek, err := kekproviders.Opener{Getenv: envLookup(srv.env)}.Open(ctx, "env://"+kekproviders.LegacyVariable)
	require.NoError(t, err)
	ring, err := broker.NewKeyring(kek)
	require.NoError(t, err)
	key, err := broker.LoadAuditKey(ctx, store, ring)
	require.NoError(t, err)

	var v scaleVerify
	start := time.Now()
	// Up to now rather than now minus the settle time: nothing writes
	// meanwhile (the fill and the users' POST /init have returned), so
	// every row is committed and the newest are sealed too.
	v.checkpoints, err = broker.SealAudit(ctx, store, key, start)
	require.NoError(t, err)
	v.sealTook = time.Since(start)
	require.Positive(t, v.checkpoints)

	cmd := exec.Command(srv.b.bin, "audit", "verify")
	cmd.Env = srv.env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start = time.Now()
	err = cmd.Run()
	v.verifyTook = time.Since(start)
	out := stdout.String()
	require.NoError(t, err, "audit verify:\n%s\n%s", out, stderr.String())
	require.Contains(t, out, "OK: no tampering found")
	require.NotContains(t, out, "FINDING")
	v.verified = summaryCount(t, out, `rows verified: (\d+)`)
	v.late = summaryCount(t, out, `rows sealed late \(written without a MAC\): (\d+)`)
	require.EqualValues(t, 0, summaryCount(t, out, `rows not sealed yet: (\d+)`), out)
	require.Equal(t, srv.s.rows, v.late, "every filled row is sealed late:\n%s", out)
	require.Equal(t, auditRows, v.verified+v.late, "every row is checked:\n%s", out)
	return v
}

// rowsPerSecond is verify's throughput over every row it checked.
func (v scaleVerify) rowsPerSecond() float64 {
	return float64(v.verified+v.late) / v.verifyTook.Seconds()
}

func summaryCount(t require.TestingT, out, pattern string) int64 {
	m := regexp.MustCompile(`(?m)^` + pattern).FindStringSubmatch(out)
	require.NotNil(t, m, "%q not in:\n%s", pattern, out)
	n, err := strconv.ParseInt(m[1], 10, 64)
	require.NoError(t, err)
	return n
}

// envLookup reads a variable from a KEY=VALUE environment.
func envLookup(env []string) func(string) string {
	return func(name string) string {
		for i := len(env) - 1; i >= 0; i-- { // the last one wins, as in exec
			if k, v, ok := strings.Cut(env[i], "="); ok && k == name {
				return v
			}
		}
		return ""
	}
}
