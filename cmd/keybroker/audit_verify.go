package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/cmd/keybroker/internal/config"
)

const auditVerifyUsage = `Usage: keybroker audit verify [flags]

Checks every audit row against its MAC and the checkpoint that sealed it,
and the checkpoints against their chain, with the audit key the configured
KEKs open (docs/audit.md). Prints one line per finding — a row edited,
inserted, deleted or moved in time, a checkpoint edited or deleted, a
retention or erasure mark forged, sealing stalled (the newest checkpoint
older than 15s plus three seal intervals) — and a summary: the rows
verified, those sealed late because they were written without a MAC (by
an older release during a rolling upgrade: listed by id), those not sealed
yet, and those gone by retention or erasure. Exits 1 when it finds
anything. It reads; the first run after a KEK rotation adds the audit
key's wrap under the active KEK.
`

func cmdAuditVerify(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cfg, err := config.Resolve(config.AuditVerify, args, getenv, stderr, auditVerifyUsage)
	if err != nil {
		return err
	}
	log := newLogger(cfg.Log, stderr)
	keks, store, closeAll, err := openKEKsAndStore(ctx, cfg, getenv, log, stderr)
	if err != nil {
		return err
	}
	defer closeAll()
	sealStore, ok := store.(broker.AuditSealStore)
	if !ok {
		return errors.New("this store keeps no tamper evidence")
	}
	wraps, err := sealStore.AuditKeyWraps(ctx)
	if err != nil {
		return err
	}
	if len(wraps) == 0 {
		return errors.New("no audit key yet: no server of this release has run on this store, so no row carries a MAC")
	}
	keyring, err := keks.lookingKeyring(ctx, store, log)
	if err != nil {
		return err
	}
	key, err := broker.LoadAuditKey(ctx, sealStore, keyring)
	if err != nil {
		return err
	}
	report, err := broker.VerifyAudit(ctx, sealStore, key, broker.VerifyOptions{StaleAfter: broker.AuditSettle + 3*cfg.AuditSealInterval})
	if err != nil {
		return err
	}
	printAuditReport(stdout, report)
	if n := len(report.Findings); n > 0 {
		return fmt.Errorf("%d findings: the audit trail was changed outside keybroker (see docs/audit.md)", n)
	}
	return nil
}

func printAuditReport(w io.Writer, r *broker.AuditReport) {
	for _, f := range r.Findings {
		fmt.Fprintln(w, "FINDING", f.String())
	}
	sealed := "none"
	if r.Checkpoints > 0 {
		sealed = fmt.Sprintf("%d, sealing rows created before %s", r.Checkpoints, r.SealedUntil.UTC().Format(time.RFC3339))
	}
	fmt.Fprintf(w, "checkpoints: %s\n", sealed)
	fmt.Fprintf(w, "rows verified: %d\n", r.Verified)
	fmt.Fprintf(w, "rows sealed late (written without a MAC): %d", r.SealedLate)
	if len(r.LateRowIDs) > 0 {
		more := ""
		if int64(len(r.LateRowIDs)) < r.SealedLate {
			more = " …"
		}
		fmt.Fprintf(w, " [%s%s]", strings.Join(r.LateRowIDs, " "), more)
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "rows committed after their window was sealed (genuine, unprotected): %d\n", r.CommittedLate)
	fmt.Fprintf(w, "rows not sealed yet: %d (without a MAC: %d)\n", r.Unsealed, r.UnsealedNoMAC)
	retained := ""
	if !r.RetainedBefore.IsZero() {
		retained = " (retention: rows before " + r.RetainedBefore.UTC().Format(time.RFC3339) + ")"
	}
	fmt.Fprintf(w, "sealed rows gone by retention: %d%s; by erasure: %d\n", r.Retained, retained, r.Erased)
	if len(r.Findings) == 0 {
		fmt.Fprintln(w, "OK: no tampering found")
	}
}
