package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/cmd/keybroker/internal/config"
)

const auditUsage = `The audit table (encryption_vault_audit): every request that reads or
changes a vault appends a row. On PostgreSQL it is partitioned by day;
each server's upkeep (hourly, one replica at a time) moves an existing
unpartitioned table over online, keeps partitions 14 days ahead and drops
those past $KEYBROKER_AUDIT_RETENTION (0, the default, keeps every row).
The embedded store deletes rows past the retention in small batches.
Every row carries a MAC and servers seal them into checkpoints: verify
names any row changed outside keybroker; export streams the rows as NDJSON
(docs/audit.md).
`

const auditStatusUsage = `Usage: keybroker audit status [flags]

The audit table: its rows (on PostgreSQL the planner's estimate, kept by
autovacuum: counting 100 million rows would take minutes), the oldest and
newest row, its size, each partition with its range, rows and size, and
the last upkeep run: when, by which replica, its error, and the rows and
partitions removed so far. It reads only the catalog and one index entry
per partition, so it answers in well under a second at any size.
`

const auditUpkeepUsage = `Usage: keybroker audit upkeep [flags]

Runs the audit upkeep once, now, as each server does every hour: on
PostgreSQL it moves an unpartitioned audit table under a partitioned one
(online: a CHECK constraint validated and an index built concurrently,
then a swap of a few milliseconds; nothing is copied), creates the
partitions of the next 14 days and, with --audit-retention, detaches and
drops the partitions past it; on the embedded store it deletes the rows
past the retention. It waits for no running server: when one holds the
upkeep's lock it says so and exits 1. Run it as the role that owns the
schema. Prints what it did.
`

func cmdAuditStatus(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cfg, err := config.Resolve(config.AuditStatus, args, getenv, stderr, auditStatusUsage)
	if err != nil {
		return err
	}
	keeper, closeStore, err := openAuditKeeper(ctx, cfg, stderr)
	if err != nil {
		return err
	}
	defer closeStore()
	st, err := keeper.AuditStatus(ctx)
	if err != nil {
		return err
	}
	printAuditStatus(stdout, st, time.Now())
	return nil
}

func cmdAuditUpkeep(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cfg, err := config.Resolve(config.AuditUpkeep, args, getenv, stderr, auditUpkeepUsage)
	if err != nil {
		return err
	}
	keeper, closeStore, err := openAuditKeeper(ctx, cfg, stderr)
	if err != nil {
		return err
	}
	defer closeStore()
	now := time.Now()
	if cfg.AuditRetention > 0 {
		if err := markAuditRetention(ctx, cfg, keeper, now.Add(-cfg.AuditRetention), now, getenv, stderr); err != nil {
			return err
		}
	}
	host, _ := os.Hostname()
	res, err := keeper.AuditUpkeep(ctx, broker.AuditUpkeepParams{Now: now, Retention: cfg.AuditRetention,
		Runner: fmt.Sprintf("keybroker audit upkeep on %s pid %d", host, os.Getpid())})
	if err != nil {
		return err
	}
	if res.Busy {
		return fmt.Errorf("another keybroker is running the audit upkeep now: nothing done")
	}
	if res.Moved {
		fmt.Fprintln(stdout, "moved the audit table under a partitioned one")
	}
	fmt.Fprintf(stdout, "partitions created: %d %s\n", len(res.Created), strings.Join(res.Created, " "))
	fmt.Fprintf(stdout, "partitions dropped: %d %s\n", len(res.Dropped), strings.Join(res.Dropped, " "))
	fmt.Fprintf(stdout, "rows removed: %s\n", formatCount(res.Deleted))
	return nil
}

// markAuditRetention records, before a retention drops sealed rows, that
// rows before before may be gone (docs/audit.md), so that audit verify
// takes the drop for retention and not for tampering. A store whose rows
// carry no MACs yet (no audit key) needs no mark; one that does needs the
// KEKs to open the audit key, as serve has them.
func markAuditRetention(ctx context.Context, cfg *config.Config, store broker.AuditKeeper, before, now time.Time, getenv func(string) string, stderr io.Writer) error {
	sealStore, ok := store.(broker.AuditSealStore)
	if !ok {
		return nil
	}
	wraps, err := sealStore.AuditKeyWraps(ctx)
	if err != nil || len(wraps) == 0 {
		return err
	}
	if cfg.KEKs.Active == nil {
		return errors.New("the retention would drop sealed audit rows, and it is recorded under the audit key first: " +
			"give the KEKs serve has ($KEYBROKER_KEK / --kek), or leave the retention to serve's hourly upkeep")
	}
	log := newLogger(cfg.Log, stderr)
	keks, err := openKEKs(ctx, cfg.KEKs, getenv, log)
	if err != nil {
		return err
	}
	defer keks.close()
	vaults, ok := store.(broker.Store)
	if !ok {
		return errors.New("this store keeps no vaults")
	}
	keyring, err := keks.lookingKeyring(ctx, vaults, log)
	if err != nil {
		return err
	}
	key, err := broker.LoadAuditKey(ctx, sealStore, keyring)
	if err != nil {
		return err
	}
	return broker.MarkAuditRetention(ctx, sealStore, key, before, now)
}

// openAuditKeeper opens the configured store as a broker.AuditKeeper.
func openAuditKeeper(ctx context.Context, cfg *config.Config, stderr io.Writer) (broker.AuditKeeper, func(), error) {
	store, closeStore, err := openToolStore(ctx, cfg, newLogger(cfg.Log, stderr), stderr)
	if err != nil {
		return nil, nil, err
	}
	keeper, ok := store.(broker.AuditKeeper)
	if !ok {
		closeStore()
		return nil, nil, fmt.Errorf("this store keeps no audit upkeep")
	}
	return keeper, closeStore, nil
}

// printAuditStatus writes st for an operator.
func printAuditStatus(w io.Writer, st *broker.AuditStatus, now time.Time) {
	rows := formatCount(st.Rows)
	if st.RowsEstimated {
		rows = "about " + rows + " (estimate)"
	}
	fmt.Fprintf(w, "audit rows: %s\n", rows)
	if st.Bytes > 0 {
		fmt.Fprintf(w, "size: %s\n", formatBytes(st.Bytes))
	}
	at := func(t *time.Time) string {
		if t == nil {
			return "unknown"
		}
		return t.UTC().Format(time.RFC3339) + " (" + formatAge(now.Sub(*t)) + " ago)"
	}
	if st.Rows > 0 || st.Oldest != nil {
		fmt.Fprintf(w, "oldest row: %s\nnewest row: %s\n", at(st.Oldest), at(st.Newest))
	}
	switch {
	case st.Partitioned:
		fmt.Fprintf(w, "partitions: %d, by day of created_at, and a default one\n", len(st.Partitions)-1)
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "  partition\tfrom\tto\trows (estimate)\tsize\t")
		bound := func(t *time.Time, open string) string {
			if t == nil {
				return open
			}
			return t.UTC().Format(time.DateOnly)
		}
		for _, p := range st.Partitions {
			from, to := bound(p.From, "(all older)"), bound(p.To, "-")
			if p.Default {
				from, to = "(default: any", "other time)"
			}
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t\n", p.Name, from, to, formatCount(p.Rows), formatBytes(p.Bytes))
		}
		tw.Flush()
	case st.Bytes > 0:
		fmt.Fprintln(w, "partitions: none yet (the next upkeep run moves the table: keybroker audit upkeep)")
	}
	if st.LastRun == nil {
		fmt.Fprintln(w, "last upkeep: never")
		return
	}
	fmt.Fprintf(w, "last upkeep: %s by %s\n", at(st.LastRun), st.LastRunner)
	if st.LastError != "" {
		fmt.Fprintf(w, "last upkeep error: %s\n", st.LastError)
	}
	fmt.Fprintf(w, "removed past the retention so far: %s partitions, %s rows\n", formatCount(st.Dropped), formatCount(st.Deleted))
}

// formatBytes writes a size in binary units.
func formatBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
