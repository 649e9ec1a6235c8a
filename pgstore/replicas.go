package pgstore

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/keybroker/keybroker/broker"
)

// The replicas' announcements (broker.ReplicaStore) go through the
// SECURITY DEFINER functions of migration 0009: the runtime role needs no
// grant on the table, and the database's clock decides who is live.

var _ broker.ReplicaStore = (*Store)(nil)

func (s *Store) replicaFunc(name string) string {
	return pgx.Identifier{s.schema, name}.Sanitize()
}

// ReplicaAnnounce inserts or renews r, live for ttl from now on the
// database's clock.
func (s *Store) ReplicaAnnounce(ctx context.Context, r broker.Replica, ttl time.Duration) error {
	if ttl < time.Millisecond {
		return fmt.Errorf("replica announce: ttl %s is too short", ttl)
	}
	_, err := s.pool.Exec(ctx, `SELECT `+s.replicaFunc("keybroker_replica_announce")+`($1, $2, $3, $4, $5, $6, $7)`,
		r.ID, r.Name, r.Version, r.ActiveKEK, r.WritesKEK, r.KEKIDs, ttl.Milliseconds())
	if err != nil {
		return interpretError(fmt.Errorf("replica announce: %w", err))
	}
	return nil
}

// ReplicaList returns the live replicas, oldest first, and the database's
// time.
func (s *Store) ReplicaList(ctx context.Context) ([]broker.Replica, time.Time, error) {
	// now() comes with every row; without rows, ask for it alone.
	rows, err := s.pool.Query(ctx, `SELECT replica_id, replica_name, replica_version, replica_active, replica_writes, replica_kek_ids,
    replica_started_at, replica_seen_at, replica_expires_at, db_now FROM `+s.replicaFunc("keybroker_replica_list")+`()
UNION ALL SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, now()`)
	if err != nil {
		return nil, time.Time{}, interpretError(fmt.Errorf("replica list: %w", err))
	}
	defer rows.Close()
	var out []broker.Replica
	var now time.Time
	for rows.Next() {
		var id, name, version, active, writes *string
		var r broker.Replica
		var started, seen, expires *time.Time
		if err := rows.Scan(&id, &name, &version, &active, &writes, &r.KEKIDs, &started, &seen, &expires, &now); err != nil {
			return nil, time.Time{}, interpretError(fmt.Errorf("replica list: %w", err))
		}
		if id == nil {
			continue // the clock row
		}
		r.ID, r.Name, r.Version, r.ActiveKEK, r.WritesKEK = *id, *name, *version, *active, *writes
		r.StartedAt, r.SeenAt, r.ExpiresAt = *started, *seen, *expires
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		return nil, time.Time{}, interpretError(fmt.Errorf("replica list: %w", err))
	}
	return out, now, nil
}

// ReplicaLeave removes the replica's announcement.
func (s *Store) ReplicaLeave(ctx context.Context, id string) error {
	if _, err := s.pool.Exec(ctx, `SELECT `+s.replicaFunc("keybroker_replica_leave")+`($1)`, id); err != nil {
		return interpretError(fmt.Errorf("replica leave: %w", err))
	}
	return nil
}
