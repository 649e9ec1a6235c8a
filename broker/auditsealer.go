package broker

import (
	"context"
	"encoding/hex"
	"log/slog"
	"time"
)

// The runtime's sealer: it loads the audit key (retrying while a KEK is
// unavailable), then seals the settled audit rows every interval.

// auditKeyRetry is the pause between attempts to load the audit key.
const auditKeyRetry = 5 * time.Second

// loadAuditKey loads the audit key before the server serves, so that
// its first rows carry MACs; when it cannot, runAuditSeal retries.
func (r *Runtime) loadAuditKey(ctx context.Context) {
	store, ok := r.cfg.Store.(AuditSealStore)
	if r.cfg.AuditSeal == nil || !ok {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, r.cfg.KEKCheckTimeout)
	defer cancel()
	if key, err := LoadAuditKey(ctx, store, r.cfg.Keyring); err == nil {
		r.cfg.AuditSeal.SetKey(key)
	}
}

// runAuditSeal runs until ctx ends.
func (r *Runtime) runAuditSeal(ctx context.Context) {
	store, ok := r.cfg.Store.(AuditSealStore)
	if !ok {
		r.cfg.Logger.Warn("the store cannot seal the audit trail: audit rows carry no MAC")
		return
	}
	log := r.cfg.Logger
	for r.cfg.AuditSeal.Key() == nil {
		// Not loaded before the start (a KEK outage, or a failure the
		// retry logs).
		key, err := LoadAuditKey(ctx, store, r.cfg.Keyring)
		if err == nil {
			r.cfg.AuditSeal.SetKey(key)
			log.Info("audit key loaded: audit rows carry a MAC from now on", slog.String("audit_key_id", key.ID()))
			break
		}
		log.Error("cannot load the audit key: audit rows are written without a MAC and sealed late until it loads",
			slog.String("error", err.Error()))
		if !r.cfg.Wait(ctx, auditKeyRetry) {
			return
		}
	}
	var sealedUpTo int64 // the newest checkpoint this process saw or wrote
	for {
		r.sealOnce(ctx, store, &sealedUpTo)
		if !r.cfg.Wait(ctx, r.cfg.AuditSealEvery) {
			return
		}
	}
}

// sealOnce seals what settled, and logs when the newest checkpoint is
// older than one this process saw: checkpoints were deleted.
func (r *Runtime) sealOnce(ctx context.Context, store AuditSealStore, seen *int64) {
	log := r.cfg.Logger
	last, err := latestCheckpoint(ctx, store)
	if err != nil {
		log.Warn("audit seal: cannot read the newest checkpoint", slog.String("error", err.Error()))
		return
	}
	if last != nil && last.N < *seen || last == nil && *seen > 0 {
		log.Error("AUDIT CHECKPOINTS DELETED: the newest checkpoint is older than one this server saw; run keybroker audit verify",
			slog.Int64("seen", *seen))
	}
	n, err := SealAudit(ctx, store, r.cfg.AuditSeal.Key(), r.cfg.Now().Add(-AuditSettle))
	if err != nil {
		log.Warn("audit seal failed; retried next interval", slog.String("error", err.Error()))
		return
	}
	if last != nil {
		*seen = max(*seen, last.N+int64(n))
	} else {
		*seen = max(*seen, int64(n))
	}
	if n > 0 {
		// The log is outside the database: the newest checkpoint's
		// number and MAC tag there make a rollback of the checkpoints
		// visible (docs/audit.md).
		if newest, err := latestCheckpoint(ctx, store); err == nil && newest != nil {
			log.Info("audit rows sealed", slog.Int("checkpoints", n), slog.Int64("newest", newest.N),
				slog.String("sealed_until", newest.To.UTC().Format(time.RFC3339Nano)),
				slog.String("mac_tag", hex.EncodeToString(newest.MAC[:min(len(newest.MAC), auditTagSize)])))
		}
	}
}
