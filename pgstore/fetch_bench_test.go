package pgstore_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/internal/testkit/pgtest"
	"github.com/keybroker/keybroker/migrations"
	"github.com/keybroker/keybroker/pgstore"
)

// benchStore is a store on a fresh database, connected as a plain role
// under forced row-level security, as in production.
func benchStore(b *testing.B) *pgstore.Store {
	b.Helper()
	ctx := context.Background()
	dbURL := pgtest.NewDatabase(b)
	role := pgtest.NewRole(b, dbURL)
	admin := pgtest.NewPool(b, dbURL)
	pgtest.Exec(b, admin, "GRANT CREATE ON DATABASE "+pgx.Identifier{admin.Config().ConnConfig.Database}.Sanitize()+" TO "+pgx.Identifier{role.Name}.Sanitize())
	pool := pgtest.NewPool(b, role.URL)
	if _, err := migrations.Apply(ctx, pool, "kb"); err != nil {
		b.Fatal(err)
	}
	store, err := pgstore.New(ctx, pgstore.Config{Pool: pool, Schema: "kb"})
	if err != nil {
		b.Fatal(err)
	}
	return store
}

// BenchmarkAuditAppend is one group commit of fetch audit rows of
// distinct users, as the broker sends it under load; ns/row is what one
// fetch's audit row costs.
func BenchmarkAuditAppend(b *testing.B) {
	for _, rows := range []int{1, 16, 128} {
		b.Run(fmt.Sprintf("rows=%d", rows), func(b *testing.B) {
			store := benchStore(b)
			ctx := context.Background()
			n := 0
			b.ReportAllocs()
			for b.Loop() {
				entries := make([]*broker.AuditEntry, rows)
				for i := range entries {
					n++
					entries[i] = &broker.AuditEntry{ID: fmt.Sprintf("bench-%d", n), UserID: fmt.Sprintf("user-%d", i),
						Action: broker.ActionFetch, IPAddress: "127.0.0.1", UserAgent: "bench", Status: 200, CreatedAt: time.Now()}
				}
				if err := store.AuditAppend(ctx, entries); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(n), "ns/row")
		})
	}
}

// BenchmarkVaultFetch is one group commit of the fetch path: the reads of
// distinct users' vaults with their audit rows, in one round trip, as the
// broker sends it under load; ns/fetch is what one GET /key costs the
// store.
func BenchmarkVaultFetch(b *testing.B) {
	for _, fetches := range []int{1, 16, 128} {
		b.Run(fmt.Sprintf("fetches=%d", fetches), func(b *testing.B) {
			store := benchStore(b)
			ctx := context.Background()
			w, iv := "d3JhcA==", ""
			for i := range fetches {
				user := fmt.Sprintf("user-%d", i)
				if err := store.InUserTx(ctx, user, func(tx broker.Tx) error {
					_, err := tx.VaultInsert(ctx, &broker.Vault{UserID: user, WrappedMK: &w, WrapIV: &iv, FormatVersion: 2,
						KEKID: "k1", CreatedAt: time.Now(), RecoveryFormatVersion: 1})
					return err
				}); err != nil {
					b.Fatal(err)
				}
			}
			outcomes := [broker.FetchDeferred]broker.FetchOutcome{
				broker.FetchMissing:       {Action: broker.ActionFailedFetch, Status: 404, Context: "not-initialised"},
				broker.FetchZeroKnowledge: {Action: broker.ActionFetch, Status: 200, Context: "zk-recovery-blob"},
				broker.FetchOpenable:      {Action: broker.ActionFetch, Status: 200},
			}
			n := 0
			b.ReportAllocs()
			for b.Loop() {
				batch := &broker.FetchBatch{Openable: []string{"k1"}, Outcomes: outcomes, Fetches: make([]*broker.Fetch, fetches)}
				for i := range batch.Fetches {
					n++
					batch.Fetches[i] = &broker.Fetch{Audit: &broker.AuditEntry{ID: fmt.Sprintf("bench-%d", n),
						UserID: fmt.Sprintf("user-%d", i), IPAddress: "127.0.0.1", UserAgent: "bench", CreatedAt: time.Now()}}
				}
				if err := store.VaultFetch(ctx, batch); err != nil {
					b.Fatal(err)
				}
				if batch.Fetches[0].Vault == nil {
					b.Fatal("no vault read")
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(n), "ns/fetch")
		})
	}
}
