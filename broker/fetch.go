package broker

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"time"
)

// VaultReader is an optional Store ability: read one user's vault in a
// single short read-only round trip, outside any explicit transaction.
// The fetch hot path uses it with an AuditAppender.
type VaultReader interface {
	// VaultRead returns the user's vault or ErrNotFound.
	VaultRead(ctx context.Context, userID string) (*Vault, error)
}

// AuditAppender is an optional Store ability: durably append the audit
// rows of operations that change nothing, several users' rows in one
// commit. It returns only once the rows are durable.
type AuditAppender interface {
	// AuditAppend writes entries in one transaction.
	AuditAppend(ctx context.Context, entries []*AuditEntry) error
}

// maxAuditBatch bounds one group commit.
const maxAuditBatch = 256

// auditCommitTimeout bounds one group commit; requests give up sooner, on
// their own deadline.
const auditCommitTimeout = 30 * time.Second

// auditBatcher is the group commit of fetch audit rows: a fetch hands its
// row over and waits until the commit that carries it is durable. While a
// commit is in flight, rows of concurrent fetches queue and go in the next
// one, so under load one fsync serves many fetches, and an idle server
// commits a lone row at once.
type auditBatcher struct {
	appender AuditAppender
	slots    chan struct{} // bounds concurrent commits

	mu      sync.Mutex
	pending []*pendingAudit
}

type pendingAudit struct {
	entry *AuditEntry
	done  chan error
}

func newAuditBatcher(appender AuditAppender, concurrency int) *auditBatcher {
	if concurrency < 1 {
		concurrency = 1
	}
	return &auditBatcher{appender: appender, slots: make(chan struct{}, concurrency)}
}

// append queues e and waits until it is durable or ctx ends. When ctx
// ends first the row may still be committed; the caller treats the fetch
// as failed either way, which errs on the side of more audit, never less.
func (b *auditBatcher) append(ctx context.Context, e *AuditEntry) error {
	p := &pendingAudit{entry: e, done: make(chan error, 1)}
	b.mu.Lock()
	b.pending = append(b.pending, p)
	b.mu.Unlock()
	b.flush()
	select {
	case err := <-p.done:
		return err
	case <-ctx.Done():
		return &UnavailableError{Dependency: DependencyStore, Err: ctx.Err()}
	}
}

// flush starts commits while there are rows queued and commit slots free.
// A commit that finishes calls flush again, so no row is left behind.
func (b *auditBatcher) flush() {
	for {
		select {
		case b.slots <- struct{}{}:
		default:
			return // every slot is committing; the next to finish picks the rows up
		}
		b.mu.Lock()
		n := min(len(b.pending), maxAuditBatch)
		batch := b.pending[:n:n]
		b.pending = b.pending[n:]
		b.mu.Unlock()
		if n == 0 {
			<-b.slots
			return
		}
		go b.commit(batch)
	}
}

func (b *auditBatcher) commit(batch []*pendingAudit) {
	entries := make([]*AuditEntry, len(batch))
	for i, p := range batch {
		entries[i] = p.entry
	}
	// The commit runs on its own context: one waiter giving up must not
	// abort the rows of the others. It is still bounded, so a store that
	// stops answering (a partition without a reset) frees the commit slot
	// instead of holding it until TCP gives up.
	ctx, cancel := context.WithTimeout(context.Background(), auditCommitTimeout)
	err := b.appender.AuditAppend(ctx, entries)
	cancel()
	for _, p := range batch {
		p.done <- err
	}
	<-b.slots
	b.flush()
}

// fastKey is Key over a VaultReader and the audit group commit: one read
// round trip, and an audit commit shared with concurrent fetches.
func (s *Service) fastKey(ctx context.Context, reader VaultReader, userID string, meta RequestMeta) (*KeyResult, error) {
	auditRow := func(action Action, status int, note string) *AuditEntry {
		return s.auditEntry(userID, meta, action, status, note)
	}
	v, err := reader.VaultRead(ctx, userID)
	if errors.Is(err, ErrNotFound) {
		if err := s.audits.append(ctx, auditRow(ActionFailedFetch, http.StatusNotFound, "not-initialised")); err != nil {
			return nil, err
		}
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	if v.ZeroKnowledge {
		if err := s.audits.append(ctx, auditRow(ActionFetch, http.StatusOK, "zk-recovery-blob")); err != nil {
			return nil, err
		}
		return zkResult(v), nil
	}
	mk, err := s.keyring.open(ctx, userID, v)
	if err != nil {
		status, note := unwrapFailureAudit(err, v)
		s.logUnwrapFailure(ctx, userID, v, err)
		if aerr := s.audits.append(ctx, auditRow(ActionFailedFetch, status, note)); aerr != nil {
			return nil, aerr
		}
		return nil, err
	}
	if err := s.audits.append(ctx, auditRow(ActionFetch, http.StatusOK, "")); err != nil {
		wipe(mk)
		return nil, err
	}
	return &KeyResult{MasterKey: mk, FormatVersion: v.FormatVersion, KEKID: v.KEKID}, nil
}
