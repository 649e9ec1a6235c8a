package pgstore

import (
	"sync"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/keybroker/keybroker/broker"
)

// fetchCall is one VaultFetch's batch, its queued statements and their
// arguments, made once and recycled: pgx.Batch.Queue allocates each
// statement and its argument slice, and boxing a string, a time or the
// MACs into an argument allocates too — together a third of a fetch's
// allocations. The arguments are pointers into the call (boxing a
// pointer allocates nothing), to pgtype values that pgx encodes as it
// encodes the Go values they hold: the same formats, the same bytes.
//
// A call is zeroed before it goes back to the pool, so that no user id,
// request metadata, MAC or vault of one batch outlives it or reaches the
// next (TestVaultFetchRecyclesNothing).
type fetchCall struct {
	batch  pgx.Batch
	queued []*pgx.QueuedQuery
	params []fetchParams
	vaults []*broker.Vault
}

// fetchParams are the arguments of one fetch's two statements.
type fetchParams struct {
	user, id, ip, agent pgtype.Text
	created             pgtype.Timestamptz
	macs                macsParam
	scopeArgs           [1]any
	fetchArgs           [10]any
	scope, fetch        pgx.QueuedQuery
}

var fetchCalls = sync.Pool{New: func() any { return new(fetchCall) }}

// newFetchCall queues the statements of b's fetches with args, the
// batch's shared $6–$9, and returns the call; its caller releases it
// once the batch's results are closed.
func (s *Store) newFetchCall(b *broker.FetchBatch, args [4]any) *fetchCall {
	c := fetchCalls.Get().(*fetchCall)
	n := len(b.Fetches)
	c.params = grow(c.params, n)
	c.queued = grow(c.queued, 2*n)
	c.vaults = grow(c.vaults, n)
	for i, f := range b.Fetches {
		p, a := &c.params[i], f.Audit
		p.user = pgtype.Text{String: a.UserID, Valid: true}
		p.id = pgtype.Text{String: a.ID, Valid: true}
		p.ip = pgtype.Text{String: a.IPAddress, Valid: true}
		p.agent = pgtype.Text{String: a.UserAgent, Valid: true}
		p.created = pgtype.Timestamptz{Time: a.CreatedAt, Valid: true}
		var macs any // NULL when the audit key was not loaded
		if f.MACs[0] != nil {
			p.macs.set(&f.MACs)
			macs = &p.macs
		}
		p.scopeArgs = [1]any{&p.user}
		p.fetchArgs = [10]any{&p.user, &p.id, &p.ip, &p.agent, &p.created, args[0], args[1], args[2], args[3], macs}
		p.scope = pgx.QueuedQuery{SQL: setScope, Arguments: p.scopeArgs[:]}
		p.fetch = pgx.QueuedQuery{SQL: s.sql.vaultFetch, Arguments: p.fetchArgs[:]}
		c.queued[2*i], c.queued[2*i+1] = &p.scope, &p.fetch
	}
	c.batch = pgx.Batch{QueuedQueries: c.queued}
	return c
}

// release zeroes c and puts it back in the pool.
func (c *fetchCall) release() {
	c.reset()
	fetchCalls.Put(c)
}

// reset zeroes everything c holds, its slices' spare capacity included.
func (c *fetchCall) reset() {
	clear(c.params[:cap(c.params)])
	clear(c.queued[:cap(c.queued)])
	clear(c.vaults[:cap(c.vaults)])
	c.batch = pgx.Batch{}
}

// grow returns s resliced to n elements, reallocated when it is too short.
func grow[T any](s []T, n int) []T {
	if cap(s) < n {
		return make([]T, n)
	}
	return s[:n]
}

// macsParam is a fetch's MACs as the statement's bytea[] (pgtype.ArrayGetter
// of BytesValuers): the one-dimensional array pgx encodes for a [][]byte,
// without boxing each element.
type macsParam struct {
	macs [broker.FetchDeferred]macBytes
	dims [1]pgtype.ArrayDimension
}

func (p *macsParam) set(macs *[broker.FetchDeferred][]byte) {
	for i, m := range macs {
		p.macs[i] = m
	}
	p.dims[0] = pgtype.ArrayDimension{Length: int32(len(macs)), LowerBound: 1}
}

func (p *macsParam) Dimensions() []pgtype.ArrayDimension { return p.dims[:] }
func (p *macsParam) Index(i int) any                     { return &p.macs[i] }
func (p *macsParam) IndexType() any                      { return (*macBytes)(nil) }

// macBytes is one MAC as a pgtype.BytesValuer: nil is NULL, as for a []byte.
type macBytes []byte

func (b *macBytes) BytesValue() ([]byte, error) { return *b, nil }
