package pgstore

import (
	"fmt"
	"reflect"

	"github.com/jackc/pgx/v5"

	"github.com/keybroker/keybroker/broker"
)

// AuditUpkeepLockKey is the upkeep's advisory lock key, for tests that
// hold it as another replica would.
var AuditUpkeepLockKey = auditUpkeepLockKey

// FetchCallReset queues b's statements as VaultFetch does, resets the
// call as VaultFetch does before recycling it, and returns what the call
// still holds that is not zero ("" when nothing is).
func FetchCallReset(s *Store, b *broker.FetchBatch) string {
	c := s.newFetchCall(b, s.fetchArgs.get(b))
	c.reset()
	for i := range c.params[:cap(c.params)] {
		if !reflect.ValueOf(c.params[i]).IsZero() {
			return fmt.Sprintf("the arguments of fetch %d", i)
		}
	}
	for i, q := range c.queued[:cap(c.queued)] {
		if q != nil {
			return fmt.Sprintf("queued statement %d", i)
		}
	}
	for i, v := range c.vaults[:cap(c.vaults)] {
		if v != nil {
			return fmt.Sprintf("vault %d", i)
		}
	}
	if !reflect.ValueOf(c.batch).IsZero() {
		return "the batch"
	}
	return ""
}

// VaultColumns are the columns scanVault reads, in its order.
const VaultColumns = vaultColumns

// VaultRowReset scans row into a vaultRow as scanVault does, resets it as
// scanVault does before recycling it, and reports whether it still holds
// anything but its scanner.
func VaultRowReset(row pgx.Row) (bool, error) {
	t := vaultRows.New().(*vaultRow)
	if err := row.Scan(t.scan); err != nil {
		return false, err
	}
	t.reset()
	t.scan = nil
	return !reflect.ValueOf(*t).IsZero(), nil
}
