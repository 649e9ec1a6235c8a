package pgstore

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/keybroker/keybroker/broker"
)

// AuditStatus reports the audit table without reading it whole: the rows
// are the planner's estimate (pg_class.reltuples, kept by autovacuum and
// ANALYZE), the oldest and newest row come from the created_at index of
// the first and last partition that has one. It reads partitions directly,
// as the role that owns them: the parent's forced policies show no role
// every user's rows. Before the move, the oldest and newest are unknown.
func (s *Store) AuditStatus(ctx context.Context) (*broker.AuditStatus, error) {
	st, err := s.auditStatus(ctx)
	if err != nil {
		return nil, interpretError(fmt.Errorf("audit status: %w", err))
	}
	return st, nil
}

func (s *Store) auditStatus(ctx context.Context) (*broker.AuditStatus, error) {
	st := &broker.AuditStatus{RowsEstimated: true}
	var dropped, deleted int64
	err := s.pool.QueryRow(ctx, `SELECT last_run_at, coalesce(last_runner, ''), coalesce(last_error, ''), dropped_partitions, dropped_rows
FROM `+pgx.Identifier{s.schema, auditUpkeep}.Sanitize()).Scan(&st.LastRun, &st.LastRunner, &st.LastError, &dropped, &deleted)
	if err != nil {
		return nil, fmt.Errorf("reading the upkeep record: %w", err)
	}
	st.Dropped, st.Deleted = dropped, deleted
	kind, err := relKind(ctx, s.pool, s.schema, auditTable)
	if err != nil {
		return nil, err
	}
	if kind != 'p' {
		err := s.pool.QueryRow(ctx, `SELECT greatest(reltuples, 0)::bigint, pg_total_relation_size(oid) FROM pg_class WHERE oid = $1::regclass`,
			pgx.Identifier{s.schema, auditTable}.Sanitize()).Scan(&st.Rows, &st.Bytes)
		if err != nil {
			return nil, fmt.Errorf("reading the table's size: %w", err)
		}
		return st, nil
	}
	st.Partitioned = true
	parts, err := listPartitions(ctx, s.pool, s.schema)
	if err != nil {
		return nil, err
	}
	for _, p := range parts {
		st.Partitions = append(st.Partitions, broker.AuditPartition{Name: p.name, From: p.from, To: p.to, Default: p.isDefault, Rows: max(p.rows, 0), Bytes: p.bytes})
		st.Rows += max(p.rows, 0)
		st.Bytes += p.bytes
	}
	// The oldest row is in the first partition that has a row; the newest
	// in the last. Each probe is one descent of a created_at index.
	edge := func(fn string, order []partition) (*time.Time, error) {
		for _, p := range order {
			var t *time.Time
			if err := s.pool.QueryRow(ctx, `SELECT `+fn+`(created_at) FROM ONLY `+pgx.Identifier{s.schema, p.name}.Sanitize()).Scan(&t); err != nil {
				return nil, fmt.Errorf("reading partition %s: %w", p.name, err)
			}
			if t != nil {
				return t, nil
			}
		}
		return nil, nil
	}
	// The default partition holds rows of any time (a clock far off):
	// probed on its own and compared.
	var days, dflt []partition
	for _, p := range parts {
		if p.isDefault {
			dflt = append(dflt, p)
		} else {
			days = append(days, p)
		}
	}
	reversed := slices.Clone(days)
	slices.Reverse(reversed)
	for _, e := range []struct {
		fn    string
		order []partition
		out   **time.Time
		wins  func(a, b time.Time) bool
	}{{"min", days, &st.Oldest, time.Time.Before}, {"max", reversed, &st.Newest, time.Time.After}} {
		t, err := edge(e.fn, e.order)
		if err != nil {
			return nil, err
		}
		d, err := edge(e.fn, dflt)
		if err != nil {
			return nil, err
		}
		if t == nil || (d != nil && e.wins(*d, *t)) {
			t = d
		}
		*e.out = t
	}
	return st, nil
}
