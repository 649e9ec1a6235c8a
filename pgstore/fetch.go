package pgstore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/keybroker/keybroker/broker"
)

// The fetch hot path: a read in one round trip, and audit rows of many
// fetches in one commit.
var _ broker.VaultFetcher = (*Store)(nil) // optional in the contract

const setScope = "SELECT set_config('app.current_user_id', $1, true)"

// VaultFetch runs the fetches of b in one round trip and one commit: for
// each, the scope setting and then one statement that reads the vault and
// inserts the audit row its case calls for, all pipelined in one batch
// that PostgreSQL runs as one implicit transaction. Every read and insert
// runs under its own user's scope, so row-level security applies to each
// as in InUserTx. The Vaults are set only once the commit is durable.
//
// The server runs the statements in order and stops at the first that
// fails, rolling back the implicit transaction, so a server error names
// the fetch that caused it: it is returned as a *broker.BatchItemError
// (an unknown user on an adopted schema is one), and the others may run
// again without it. Outages and failures the server did not report
// against a statement fail the whole batch.
func (s *Store) VaultFetch(ctx context.Context, b *broker.FetchBatch) error {
	for i, f := range b.Fetches {
		if f.Audit.UserID == "" {
			return &broker.BatchItemError{Index: i, Err: fmt.Errorf("pgstore: vault fetch: %w: empty user id", broker.ErrInvalidArgument)}
		}
	}
	// The same for every fetch of the batch: encoded (and boxed) once.
	c := s.newFetchCall(b, s.fetchArgs.get(b))
	defer c.release()
	results := s.pool.SendBatch(ctx, &c.batch)
	for i := range b.Fetches {
		if _, err := results.Exec(); err != nil {
			results.Close()
			return fetchError(i, fmt.Errorf("vault fetch: set scope: %w", err))
		}
		v, err := scanVault(results.QueryRow())
		if err != nil && !errors.Is(err, pgx.ErrNoRows) {
			results.Close()
			return fetchError(i, fmt.Errorf("vault fetch: %w", err))
		}
		c.vaults[i] = v
	}
	if err := results.Close(); err != nil {
		return interpretError(fmt.Errorf("vault fetch: commit: %w", err))
	}
	for i, f := range b.Fetches {
		f.Vault = c.vaults[i]
	}
	return nil
}

// fetchError is the error of VaultFetch when fetch i's statements
// failed: a *broker.BatchItemError when the server refused one of them
// (the implicit transaction is then rolled back: nothing was recorded),
// else the batch's error (an outage, or a failure on the client's side,
// after which the server may still commit).
func fetchError(i int, err error) error {
	interpreted := interpretError(err)
	var pgErr *pgconn.PgError
	if broker.IsUnavailable(interpreted) || !errors.As(err, &pgErr) {
		return interpreted
	}
	return &broker.BatchItemError{Index: i, Err: interpreted}
}

// VaultRead reads the user's vault in one round trip: the scope setting
// and the select are pipelined in one batch, which PostgreSQL runs as one
// implicit transaction, so the transaction-local scope covers the select
// and row-level security applies as in InUserTx. It returns
// broker.ErrNotFound when the user has no vault.
func (s *Store) VaultRead(ctx context.Context, userID string) (*broker.Vault, error) {
	if userID == "" {
		return nil, fmt.Errorf("pgstore: %w: empty user id", broker.ErrInvalidArgument)
	}
	batch := &pgx.Batch{}
	batch.Queue(setScope, userID)
	batch.Queue(s.sql.vaultGet, userID)
	results := s.pool.SendBatch(ctx, batch)
	if _, err := results.Exec(); err != nil {
		results.Close()
		return nil, interpretError(fmt.Errorf("vault read: set scope: %w", err))
	}
	v, err := scanVault(results.QueryRow())
	closeErr := results.Close()
	if errors.Is(err, pgx.ErrNoRows) {
		err = nil
		if closeErr == nil {
			return nil, broker.ErrNotFound
		}
	}
	if err == nil {
		err = closeErr
	}
	if err != nil {
		return nil, interpretError(fmt.Errorf("vault read: %w", err))
	}
	return v, nil
}

// AuditAppend writes entries, possibly of many users, in one statement,
// which PostgreSQL runs as one implicit transaction, in one round trip.
// It returns once the commit is durable; an error means none of the rows
// was kept.
//
// Row-level security still checks every row under its own user's scope:
// the user_id of each row is computed by set_config, which sets the scope
// to that very value as the row is produced, and PostgreSQL inserts a row
// (and runs the policy's WITH CHECK on it) before it produces the next.
// One statement instead of a scope and an insert per row is what makes a
// group commit cheaper for the database than the fetches' own commits.
func (s *Store) AuditAppend(ctx context.Context, entries []*broker.AuditEntry) error {
	if len(entries) == 0 {
		return nil
	}
	n := len(entries)
	ids, users, actions, ips, agents, notes := make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	statuses, created, macs := make([]int32, n), make([]time.Time, n), make([][]byte, n)
	for i, e := range entries {
		if e.UserID == "" {
			return fmt.Errorf("pgstore: audit append: %w: empty user id", broker.ErrInvalidArgument)
		}
		ids[i], users[i], actions[i], ips[i], agents[i], notes[i] = e.ID, e.UserID, string(e.Action), e.IPAddress, e.UserAgent, e.Context
		statuses[i], created[i], macs[i] = int32(e.Status), e.CreatedAt, e.MAC
	}
	tag, err := s.pool.Exec(ctx, s.sql.auditAppend, ids, users, actions, ips, agents, notes, statuses, created, macs)
	if err != nil {
		return interpretError(fmt.Errorf("audit append: %w", err))
	}
	if tag.RowsAffected() != int64(n) {
		// Cannot happen (nothing filters rows); an error rather than a
		// silent gap in the audit trail if it ever does.
		return fmt.Errorf("pgstore: audit append: %d of %d rows inserted", tag.RowsAffected(), n)
	}
	return nil
}
