package broker

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/keybroker/keybroker/grant"
)

// Mission grants: a user lets a background worker decrypt a chosen set of
// records while the user's browser is closed. The server derives a
// mission data key from the user's master key, bound to the scope, and
// wraps it to the worker's public key (package grant). The master key
// never leaves this file's transaction, and the mission data key leaves
// it only wrapped.

// GrantRequest is a request for a mission grant.
type GrantRequest struct {
	MissionID string
	Tables    []string
	RecordIDs []string
	// TTLMillis is the requested lifetime in milliseconds; nil for the
	// default. It is clamped (grant.Lifetime).
	TTLMillis *float64
	// Recipient names the worker. "" is the default recipient, and the
	// grant is then the upstream's: RSA-OAEP bound to nothing. A named
	// recipient's wrap is bound to the grant's terms.
	Recipient string
}

// GrantResult is an issued grant.
type GrantResult struct {
	// WrappedKey is the mission data key wrapped to the recipient.
	WrappedKey []byte
	Terms      grant.Terms
	// Recipient is the recipient's name (grant.DefaultRecipient for a
	// request that named none).
	Recipient string
	Algorithm grant.Algorithm
	// Bound reports a wrap bound to its terms (grant.BindingInfo): every
	// grant to a named recipient. false for the upstream's unbound wrap.
	Bound bool
}

// GrantEvent is the outcome of one Grant, for metrics.
type GrantEvent struct {
	// Recipient is the configured recipient the grant was for, "" when
	// the request named none that is configured.
	Recipient string
	Outcome   Outcome
}

// Grant issues a mission grant to the user's worker: it reads the vault,
// unwraps the master key, derives the mission data key of the requested
// scope (grant.DeriveKey), wraps it to the recipient and records an
// ActionMissionGrant audit row, all in one transaction. The audit row's
// context names the mission, the recipient and a digest of the scope;
// the keys are wiped before it returns.
//
// It returns ErrInvalidArgument (wrapping a *grant.InputError whose text
// may be shown to the client) for a scope the grant contract refuses,
// before any transaction; and, each audited, ErrGrantNotConfigured when
// the request names no recipient and no default is configured,
// ErrGrantRecipientUnknown for a named recipient that is not configured,
// ErrNotFound without a vault and ErrGrantZeroKnowledge in
// zero-knowledge mode. A wrap that does not open is audited and
// returned as by Init.
func (s *Service) Grant(ctx context.Context, userID string, req GrantRequest, meta RequestMeta) (*GrantResult, error) {
	res, err := s.grant(ctx, userID, req, meta)
	if s.onGrant != nil {
		event := GrantEvent{Outcome: OutcomeOf(err)}
		if r, ok := s.grants.Lookup(req.Recipient); ok {
			event.Recipient = r.Name()
		}
		s.onGrant(event)
	}
	return res, err
}

func (s *Service) grant(ctx context.Context, userID string, req GrantRequest, meta RequestMeta) (*GrantResult, error) {
	if req.Recipient != "" {
		if err := grant.CheckRecipientName(req.Recipient); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalidArgument, err)
		}
	}
	d, err := grant.NewDerivation(req.MissionID, req.Tables, req.RecordIDs)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidArgument, err)
	}
	name := cmp.Or(req.Recipient, grant.DefaultRecipient)
	refusal := func(reason string) string {
		return reason + ";recipient=" + name + ";mission=" + d.MissionID
	}
	var res *GrantResult
	err = s.run(ctx, userID, meta, ActionMissionGrant, func(o *op) error {
		res = nil
		recipient, ok := s.grants.Lookup(req.Recipient)
		switch {
		case !ok && req.Recipient == "":
			return o.refuse(ctx, ActionMissionGrant, refusal("not-configured"), ErrGrantNotConfigured)
		case !ok:
			return o.refuse(ctx, ActionMissionGrant, refusal("unknown-recipient"), ErrGrantRecipientUnknown)
		}
		v, err := o.tx.VaultGet(ctx, false)
		if errors.Is(err, ErrNotFound) {
			return o.refuse(ctx, ActionMissionGrant, refusal("no-vault"), ErrNotFound)
		}
		if err != nil {
			return err
		}
		if v.ZeroKnowledge {
			return o.refuse(ctx, ActionMissionGrant, refusal("zk-active"), ErrGrantZeroKnowledge)
		}
		mk, _, err := o.openOrRefuse(ctx, v)
		if mk == nil {
			return err
		}
		mdk, err := grant.DeriveKey(mk, d)
		wipe(mk)
		if err != nil {
			return fmt.Errorf("broker: derive mission key: %w", err)
		}
		defer wipe(mdk)
		now := s.now()
		terms := grant.NewTerms(d, now, req.TTLMillis)
		bound := req.Recipient != ""
		var wrapped []byte
		if bound {
			wrapped, err = recipient.Wrap(mdk, terms)
		} else {
			wrapped, err = recipient.WrapUnbound(mdk)
		}
		if err != nil {
			return fmt.Errorf("broker: wrap mission key to %s: %w", recipient.Name(), err)
		}
		// The row's time is the grant's own, whose millisecond is the
		// terms' IssuedAt (parseGrantNote), and its MAC is over it: a time
		// changed after the MAC was the row an audit verify reports as
		// modified. Not the terms' time itself, cut to the millisecond,
		// which could sort the row before the one written just before it.
		entry := s.auditEntryAt(now, userID, meta, ActionMissionGrant, OutcomeOK.AuditStatus(), grantNote(recipient, terms))
		if err := o.tx.AuditInsert(ctx, entry); err != nil {
			return err
		}
		res = &GrantResult{WrappedKey: wrapped, Terms: terms, Recipient: recipient.Name(), Algorithm: recipient.Algorithm(), Bound: bound}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return res, nil
}

// grantMissionField is the last field of a grant's audit context: the
// mission id follows it verbatim, whatever it holds, so that nothing
// needs escaping. The fields before it never hold it.
const grantMissionField = ";mission="

// grantNote is the audit context of an issued grant:
// recipient=NAME;algorithm=ALG;scope=sha256:DIGEST;tables=N;records=N;
// expires=ISO;mission=ID. It fits the audit text limit: the recipient
// name, the mission id and the counts are bounded (package grant).
func grantNote(r *grant.Recipient, t grant.Terms) string {
	d := t.Derivation
	return "recipient=" + r.Name() +
		";algorithm=" + string(r.Algorithm()) +
		";scope=" + d.ScopeDigestString() +
		";tables=" + strconv.Itoa(len(d.Tables)) +
		";records=" + strconv.Itoa(len(d.RecordIDs)) +
		";expires=" + t.ExpiresAt.UTC().Format(grantTimeLayout) +
		grantMissionField + d.MissionID
}

// grantTimeLayout is the ISO form of the API's times.
const grantTimeLayout = "2006-01-02T15:04:05.000Z"

// GrantRecord is an issued grant as the data export lists it, read back
// from its audit row. It holds no key and not the scope itself: the
// digest names the scope (grant.Derivation.ScopeDigestString).
type GrantRecord struct {
	MissionID   string
	Recipient   string
	Algorithm   grant.Algorithm
	ScopeDigest string
	Tables      int
	Records     int
	IssuedAt    time.Time
	ExpiresAt   time.Time
}

// parseGrantNote reads an issued grant's audit row back; ok is false for
// a row whose context is not grantNote's.
func parseGrantNote(e AuditEntry) (GrantRecord, bool) {
	fields, mission, found := strings.Cut(e.Context, grantMissionField)
	if !found || mission == "" {
		return GrantRecord{}, false
	}
	// The row's time cut to the millisecond is the terms' IssuedAt (rows
	// written before it was the row's time itself are cut already).
	rec := GrantRecord{MissionID: mission, IssuedAt: e.CreatedAt.UTC().Truncate(time.Millisecond)}
	seen := 0
	for field := range strings.SplitSeq(fields, ";") {
		key, value, _ := strings.Cut(field, "=")
		var err error
		switch key {
		case "recipient":
			rec.Recipient = value
		case "algorithm":
			rec.Algorithm = grant.Algorithm(value)
		case "scope":
			rec.ScopeDigest = value
		case "tables":
			rec.Tables, err = strconv.Atoi(value)
		case "records":
			rec.Records, err = strconv.Atoi(value)
		case "expires":
			rec.ExpiresAt, err = time.Parse(time.RFC3339Nano, value)
		default:
			return GrantRecord{}, false
		}
		if err != nil {
			return GrantRecord{}, false
		}
		seen++
	}
	return rec, seen == 6
}

// MaxExportedGrants bounds the grants a data export lists: the newest
// ones. The audit route pages through all of them.
const MaxExportedGrants = 1000

// grantRecords returns the user's newest issued grants, newest first, at
// most MaxExportedGrants, and whether older ones were left out.
func (s *Service) grantRecords(ctx context.Context, userID string) ([]GrantRecord, bool, error) {
	rows, err := s.store.AuditByAction(ctx, userID, AuditQuery{Action: ActionMissionGrant, Status: OutcomeOK.AuditStatus(), Limit: MaxExportedGrants + 1})
	if err != nil {
		return nil, false, err
	}
	truncated := len(rows) > MaxExportedGrants
	if truncated {
		rows = rows[:MaxExportedGrants]
	}
	var out []GrantRecord
	for _, row := range rows {
		rec, ok := parseGrantNote(row)
		if !ok {
			s.log.Warn("an issued grant's audit row has a context this release does not read; left out of the export",
				"audit_id", row.ID)
			continue
		}
		out = append(out, rec)
	}
	return out, truncated, nil
}
