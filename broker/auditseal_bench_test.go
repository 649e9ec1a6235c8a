package broker

import (
	"testing"
	"time"
)

// BenchmarkAuditStampFetch is what tamper evidence adds to one GET /key
// in the server: the three MACs of its audit row, one per case the store
// may find (docs/audit.md). Compare with pgstore's BenchmarkVaultFetch
// ns/fetch.
func BenchmarkAuditStampFetch(b *testing.B) {
	seal := &AuditSeal{}
	seal.SetKey(newAuditKey(auditKeyID, make([]byte, 32)))
	b.ReportAllocs()
	for b.Loop() {
		f := &Fetch{Audit: &AuditEntry{ID: newAuditID(time.Now()), UserID: "user-0123456789", IPAddress: "203.0.113.77",
			UserAgent: "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36",
			CreatedAt: time.Now()}}
		seal.stampFetch(f, &fetchOutcomes)
	}
}
