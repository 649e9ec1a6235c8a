package pgstore

import (
	"fmt"
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
)

// planCache keeps the scan plans of one query's rows between rows.
// pgx plans the scan of every column again for each Rows it returns, and
// the fetch path reads one row per Rows: planning its 21 columns was
// about a fifth of a fetch's allocations. The plans are made by
// pgtype.Map.PlanScan for the same column types, formats and destination
// types, as pgx would make them; a set is used by one scan at a time
// (sync.Pool) and made again when the columns differ.
type planCache struct{ pool sync.Pool }

type planSet struct {
	oids    []uint32
	formats []int16
	plans   []pgtype.ScanPlan
}

func (s *planSet) matches(fds []pgconn.FieldDescription) bool {
	if len(fds) != len(s.oids) {
		return false
	}
	for i, fd := range fds {
		if fd.DataTypeOID != s.oids[i] || fd.Format != s.formats[i] {
			return false
		}
	}
	return true
}

// scanner returns a pgx.RowScanner that scans a row into dest, whose
// types must be the same on every call with this cache.
func (c *planCache) scanner(dest ...any) pgx.RowScanner { return &cachedScan{cache: c, dest: dest} }

type cachedScan struct {
	cache *planCache
	dest  []any
}

func (s *cachedScan) ScanRow(rows pgx.Rows) error {
	fds, raw := rows.FieldDescriptions(), rows.RawValues()
	if len(fds) != len(s.dest) || len(raw) != len(s.dest) {
		return fmt.Errorf("pgstore: %d columns for %d destinations", len(fds), len(s.dest))
	}
	set, _ := s.cache.pool.Get().(*planSet)
	if set == nil || !set.matches(fds) {
		m := rows.Conn().TypeMap()
		set = &planSet{oids: make([]uint32, len(fds)), formats: make([]int16, len(fds)), plans: make([]pgtype.ScanPlan, len(fds))}
		for i, fd := range fds {
			set.oids[i], set.formats[i] = fd.DataTypeOID, fd.Format
			set.plans[i] = m.PlanScan(fd.DataTypeOID, fd.Format, s.dest[i])
		}
	}
	defer s.cache.pool.Put(set)
	for i, plan := range set.plans {
		if err := plan.Scan(raw[i], s.dest[i]); err != nil {
			return fmt.Errorf("pgstore: column %s: %w", fds[i].Name, err)
		}
	}
	return nil
}
