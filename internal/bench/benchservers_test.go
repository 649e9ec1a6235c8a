package bench

import (
	"cmp"
	"context"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/internal/jwtissuer"
	"github.com/keybroker/keybroker/internal/testkit/kmstest/localkms"
	"github.com/keybroker/keybroker/internal/testkit/pgtest"
	"github.com/keybroker/keybroker/pgstore"
)

// The rows' servers (PostgreSQL with an env KEK, AWS KMS direct and cached, SQLite), the pgbench floor's steps, and how passes merge into one row.

// server is one configuration under test: a running keybroker whose
// users are initialised.
type server struct {
	key, title string
	p          *Process
	env        []string
	dbURL      string // the PostgreSQL database, for the floor; empty for SQLite
}

// floorStep runs pgbench at the concurrency of the step just measured,
// on the same database, while the server idles.
func (b *bench) floorStep(dbURL, script, dir string, c int) {
	t := b.t
	// pgbench opens one connection per client. The server's
	// max_connections is shared with the idle servers' pools and with
	// whatever else uses it: take what is free, and fewer clients when
	// the server still turns some away.
	clients := min(c, b.maxConns-connectionsInUse(t)-10)
	var res *Result
	var err error
	db := PostgresCPU()
	for range 3 {
		if res, err = Pgbench(context.Background(), dbURL, script, clients, 0, b.s.duration+b.s.warmup, dir); err == nil ||
			!strings.Contains(err.Error(), "connection slots") || clients < 2 {
			break
		}
		clients /= 2
	}
	require.NoError(t, err)
	// pgbench's whole run, warm-up included, is in res: so is its CPU.
	row := &Row{Config: floorTitle, Concurrency: c, Result: res, KMSCalls: -1, Generator: GeneratorPgbench, DBCPU: PostgresCPU() - db}
	if clients != c {
		row.Note = fmt.Sprintf("%d clients: the rest of max_connections (%d) was in use", clients, b.maxConns)
	}
	merged := b.mergeRow(row)
	b.floor[c] = merged.Result.RPS()
	t.Logf("%-45s %4d conns: %8.0f tx/s   p50 %s  p99 %s  p99.9 %s  PostgreSQL %.0f µs/tx",
		floorTitle, clients, res.RPS(), ms(res.Percentile(50)), ms(res.Percentile(99)), ms(res.Percentile(99.9)),
		usPer(row.DBCPU, res.OK))
}

// pacedFloorStep runs pgbench paced at rate, right after the server's
// paced step at that rate, with as many connections as the server's pool
// opens: the same SQL at the same pace on the same PostgreSQL, one
// durable commit per fetch.
func (b *bench) pacedFloorStep(dbURL, script, dir string, rate float64) {
	t := b.t
	clients := pgstore.DefaultPoolSize()
	res, err := Pgbench(context.Background(), dbURL, script, clients, rate, b.s.duration+b.s.warmup, dir)
	require.NoError(t, err)
	b.rows = append(b.rows, &Row{Config: floorTitle, Concurrency: clients, Rate: rate, Result: res, KMSCalls: -1, Generator: GeneratorPgbench,
		Note: "paced, as many connections as keybroker's pool"})
	t.Logf("%-45s %4d conns @ %.0f/s: %8.0f tx/s   p50 %s  p99 %s  p99.9 %s",
		floorTitle, clients, rate, res.RPS(), ms(res.Percentile(50)), ms(res.Percentile(99)), ms(res.Percentile(99.9)))
}

func (b *bench) startPGEnv() *server {
	dbURL := b.database()
	env := b.serverEnv("DATABASE_URL="+dbURL, newKEKEnv())
	p, err := b.start(env)
	require.NoError(b.t, err)
	return &server{key: rowPGEnv, title: rowTitles[rowPGEnv], p: p, env: env, dbURL: dbURL}
}

func (b *bench) awsURI(cacheOff bool) string {
	q := url.Values{}
	q.Set("id", "aws-bench")
	q.Set("region", localkms.Region)
	q.Set("endpoint", b.kms.URL)
	if cacheOff {
		q.Set("cache", "off")
	}
	return "awskms:///" + b.kmsKey.Alias + "?" + q.Encode()
}

func (b *bench) startAWS(key string) *server {
	t := b.t
	title := rowTitles[key]
	dbURL := b.database()
	awsEnv := func(uri string) []string {
		return b.serverEnv("DATABASE_URL="+dbURL, "KEYBROKER_KEK="+uri,
			"AWS_ACCESS_KEY_ID=AKIDLOCALKMS", "AWS_SECRET_ACCESS_KEY=local-kms-secret",
			"AWS_EC2_METADATA_DISABLED=true", "AWS_REGION="+localkms.Region)
	}
	env := awsEnv(b.awsURI(key == rowAWSDirect))
	p, err := b.start(env)
	if err != nil && strings.Contains(err.Error(), "cache") {
		// This keybroker has no cache option: every KMS KEK is direct.
		if key == rowAWSCached {
			b.skipped = append(b.skipped, title+": this keybroker has no cached envelope mode for KEK URIs yet (no cache= option)")
			return nil
		}
		env = awsEnv(b.awsURI(false))
		p, err = b.start(env)
	}
	require.NoError(t, err)
	return &server{key: key, title: title, p: p, env: env, dbURL: dbURL}
}

func (b *bench) startSQLite() *server {
	t := b.t
	title := rowTitles[rowSQLite]
	env := b.serverEnv("KEYBROKER_DATA_DIR="+t.TempDir(), newKEKEnv())
	p, err := b.start(env)
	if err != nil && strings.Contains(err.Error(), "no database") {
		b.skipped = append(b.skipped, title+": `keybroker serve` does not open the embedded store yet")
		return nil
	}
	require.NoError(t, err)
	return &server{key: rowSQLite, title: title, p: p, env: env}
}

// freshTokenStep measures the env-KEK server at freshConcurrency with a
// token nobody presented before on every request: enough tokens are
// minted for the step at the rate the random-token step reached.
func (b *bench) freshTokenStep(p *Process) {
	t := b.t
	rate := 0.0
	if r := b.closedRow(rowTitles[rowPGEnv], freshConcurrency); r != nil {
		rate = r.Result.RPS()
	}
	if rate == 0 {
		return // freshConcurrency is not among the swept concurrencies
	}
	n := min(int(rate*(b.s.warmup+b.s.duration).Seconds()*1.5)+1000, 200_000)
	now := time.Now()
	tokens := make([]string, n)
	for i := range tokens {
		tok, err := b.issuer.Mint(jwtissuer.Claims{Subject: UserID(i%b.s.users + 1), IssuedAt: now, Expiry: now.Add(2 * time.Hour)})
		require.NoError(t, err)
		tokens[i] = tok
	}
	row := b.stepWith(freshTitle, p, freshConcurrency, 0, tokens, true)
	if used := row.Result.OK + row.Result.Errors; used > n {
		row.Note = fmt.Sprintf("%d tokens for about %d requests: some were presented twice", n, used)
	}
	b.rows = append(b.rows, row)
}

// sortRows orders the table for reading: each configuration's rows
// together, the floor and the peer beside the env-KEK row of the same
// concurrency or pace, closed-loop steps by concurrency, then the paced
// steps by pace.
func (b *bench) sortRows() {
	group := map[string]int{rowTitles[rowPGEnv]: 0, floorTitle: 0, peerTitle: 0, oldTitle: 0, freshTitle: 1,
		rowTitles[rowAWSDirect]: 2, rowTitles[rowAWSCached]: 3, rowTitles[rowSQLite]: 4}
	slices.SortStableFunc(b.rows, func(x, y *Row) int {
		if d := group[x.Config] - group[y.Config]; d != 0 {
			return d
		}
		if px, py := x.Rate > 0, y.Rate > 0; px != py {
			if px {
				return 1
			}
			return -1
		}
		if d := cmp.Compare(x.Rate, y.Rate); d != 0 {
			return d
		}
		if d := x.Concurrency - y.Concurrency; x.Rate == 0 && d != 0 {
			return d
		}
		// keybroker, then the floor, then the peer.
		rank := func(r *Row) int {
			switch r.Config {
			case floorTitle:
				return 1
			case peerTitle:
				return 2
			}
			return 0
		}
		return rank(x) - rank(y)
	})
}

// mergeRow adds row to the table, or, when the table has the same
// configuration at the same concurrency from an earlier pass, merges it
// into that row: requests, errors, windows and CPU time add up, latency
// samples pool, the peak RSS is the larger. It returns the table's row.
func (b *bench) mergeRow(row *Row) *Row {
	for _, r := range b.rows {
		if r.Config != row.Config || r.Concurrency != row.Concurrency || r.Rate != row.Rate {
			continue
		}
		r.Result.OK += row.Result.OK
		r.Result.Errors += row.Result.Errors
		r.Result.Elapsed += row.Result.Elapsed
		r.Result.Latencies = append(r.Result.Latencies, row.Result.Latencies...)
		slices.Sort(r.Result.Latencies)
		if r.Result.FirstError == "" {
			r.Result.FirstError = row.Result.FirstError
		}
		r.PeakRSS = max(r.PeakRSS, row.PeakRSS)
		r.CPU += row.CPU
		r.DBCPU += row.DBCPU
		r.Result.GeneratorCPU += row.Result.GeneratorCPU
		r.ServerLatencies = append(r.ServerLatencies, row.ServerLatencies...)
		r.GroupCommits = GroupCommits{Commits: r.GroupCommits.Commits + row.GroupCommits.Commits,
			Requests: r.GroupCommits.Requests + row.GroupCommits.Requests, Took: r.GroupCommits.Took + row.GroupCommits.Took}
		slices.Sort(r.ServerLatencies)
		if r.KMSCalls >= 0 {
			r.KMSCalls += row.KMSCalls
			r.KMSProbes += row.KMSProbes
		}
		if r.Note == "" {
			r.Note = row.Note
		}
		return r
	}
	b.rows = append(b.rows, row)
	return row
}

// connectionsInUse counts the PostgreSQL server's open connections.
func connectionsInUse(t *testing.T) int {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, pgtest.AdminURL())
	require.NoError(t, err)
	defer conn.Close(ctx)
	var n int
	require.NoError(t, conn.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'").Scan(&n))
	return n
}
