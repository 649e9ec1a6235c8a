package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/keybroker/keybroker/grant"
)

// Config configures a Service.
type Config struct {
	Store   Store
	Keyring *Keyring
	// Logger receives operational errors; never key material. Defaults to
	// slog.Default().
	Logger *slog.Logger
	// Now is the clock; defaults to time.Now.
	Now func() time.Time
	// AuditCommitters bounds the concurrent group commits of fetches.
	// Default 1: the fetches that arrive while a commit is in flight
	// gather into the next, which on 2 cores gave 12% more throughput and
	// 16% less CPU per fetch than 2 (make bench).
	AuditCommitters int
	// OnGroupCommit, when set, is called after each group commit of the
	// fetch path (for metrics: batch sizes and commit latency). It runs
	// on the committing goroutine and must not block.
	OnGroupCommit func(GroupCommit)
	// RecoveryProof says whether replacing the recovery wrap of a
	// zero-knowledge vault needs a key possession proof. Default
	// RecoveryProofRequired.
	RecoveryProof RecoveryProofPolicy
	// GrantRecipients are the workers mission grants may be wrapped to
	// (Grant). nil or empty: every grant is refused with
	// ErrGrantNotConfigured.
	GrantRecipients *grant.Recipients
	// OnGrant, when set, is told the outcome of every Grant (for
	// metrics). It must not block.
	OnGrant func(GrantEvent)
	// AuditSeal, when set, holds the audit key that MACs every audit row
	// (docs/audit.md); rows are written without a MAC while it holds
	// none.
	AuditSeal *AuditSeal
}

// RecoveryProofPolicy is whether a zero-knowledge recovery wrap may be
// replaced without a key possession proof.
type RecoveryProofPolicy string

// The recovery proof policies.
const (
	// RecoveryProofRequired refuses a replacement without a proof
	// (ErrKeyProofRequired) on every vault whose proof the server can
	// check.
	RecoveryProofRequired RecoveryProofPolicy = "required"
	// RecoveryProofOptional accepts a replacement without a proof, for
	// clients that cannot send one yet, but first keeps the replaced wrap
	// in the restore slot (when the slot is empty), so that the operator
	// can restore it. A wrong proof is refused all the same.
	RecoveryProofOptional RecoveryProofPolicy = "optional"
)

// ParseRecoveryProofPolicy parses "required" or "optional".
func ParseRecoveryProofPolicy(s string) (RecoveryProofPolicy, error) {
	switch p := RecoveryProofPolicy(s); p {
	case RecoveryProofRequired, RecoveryProofOptional:
		return p, nil
	}
	return "", fmt.Errorf("recovery proof policy %q: use required or optional", s)
}

func (c *Config) validate() error {
	if c.Store == nil {
		return errors.New("broker: Config.Store is required")
	}
	if c.Keyring == nil {
		return errors.New("broker: Config.Keyring is required")
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.AuditCommitters == 0 {
		c.AuditCommitters = 1
	}
	if c.AuditCommitters < 0 {
		return errors.New("broker: Config.AuditCommitters must be positive")
	}
	if c.RecoveryProof == "" {
		c.RecoveryProof = RecoveryProofRequired
	}
	if _, err := ParseRecoveryProofPolicy(string(c.RecoveryProof)); err != nil {
		return fmt.Errorf("broker: Config.RecoveryProof: %w", err)
	}
	return nil
}

// Service performs the vault operations of the HTTP API. Every operation
// is one store transaction; its audit row is written in that transaction.
type Service struct {
	store         Store
	keyring       *Keyring
	log           *slog.Logger
	now           func() time.Time
	recoveryProof RecoveryProofPolicy
	grants        *grant.Recipients
	onGrant       func(GrantEvent)
	auditSeal     *AuditSeal

	// The fetch hot path: with fetches when the store is a VaultFetcher
	// (one round trip per fetch), else a VaultRead and then the audit
	// group commit.
	audits  *groupCommit[*AuditEntry]
	fetcher VaultFetcher
	fetches *groupCommit[*Fetch]

	// format1 says whether format-1 wraps may open (format1.go).
	format1 *format1Gate
}

// New returns a Service.
func New(ctx context.Context, cfg Config) (*Service, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	s := &Service{store: cfg.Store, keyring: cfg.Keyring, log: cfg.Logger, now: cfg.Now, recoveryProof: cfg.RecoveryProof, format1: newFormat1Gate(cfg.Store),
		grants: cfg.GrantRecipients, onGrant: cfg.OnGrant, auditSeal: cfg.AuditSeal}
	s.audits = newGroupCommit(GroupCommitAudit, cfg.AuditCommitters, cfg.OnGroupCommit, cfg.Store.AuditAppend)
	if fetcher, ok := cfg.Store.(VaultFetcher); ok {
		s.fetcher = fetcher
		s.fetches = newGroupCommit(GroupCommitFetch, cfg.AuditCommitters, cfg.OnGroupCommit, s.fetchGroup)
		// A fetch refused before it is queued has done nothing yet; the
		// audit commit's items follow an unwrap, and always queue.
		s.fetches.shed = true
	}
	return s, nil
}

// Keyring returns the service's keyring.
func (s *Service) Keyring() *Keyring { return s.keyring }

// KeyResult is what /init, /key and /rotate return: the master key in
// standard mode, or the recovery wrap in zero-knowledge mode.
type KeyResult struct {
	MasterKey            []byte // nil when RequiresRecoveryCode
	FormatVersion        int
	KEKID                string
	RequiresRecoveryCode bool
	RecoveryWrappedMK    string
	RecoveryIV           string
}

// Status is the cheap metadata of /status.
type Status struct {
	VaultExists     bool
	HasRecoveryWrap bool
	ZeroKnowledge   bool
	RecoverySetAt   *time.Time
}

// op is the bookkeeping of one operation: the transaction commits with
// its audit row, and a refusal is carried out of the transaction in
// refusal so that the audit row of the refusal commits too.
type op struct {
	s       *Service
	userID  string
	meta    RequestMeta
	tx      Tx
	refusal error
}

// audit writes the operation's audit row, which records outcome.
func (o *op) audit(ctx context.Context, action Action, outcome Outcome, note string) error {
	return o.tx.AuditInsert(ctx, o.s.auditEntry(o.userID, o.meta, action, outcome.AuditStatus(), note))
}

// refuse records the refusal err, under the outcome it reports, and ends
// the transaction with nothing changed but its audit row.
func (o *op) refuse(ctx context.Context, action Action, note string, err error) error {
	o.refusal = err
	return o.audit(ctx, action, OutcomeOf(err), note)
}

// run executes fn in a user-scoped transaction; action is the audit
// action of the operation, for the log when no audit row can be written.
func (s *Service) run(ctx context.Context, userID string, meta RequestMeta, action Action, fn func(o *op) error) error {
	if userID == "" {
		return fmt.Errorf("%w: empty user id", ErrInvalidArgument)
	}
	o := &op{s: s, userID: userID, meta: meta}
	err := s.store.InUserTx(ctx, userID, func(tx Tx) error {
		o.tx, o.refusal = tx, nil
		return fn(o)
	})
	if err != nil {
		s.logUnrecorded(ctx, userID, meta, action, err)
		return err
	}
	return o.refusal
}

// logUnrecorded logs a request refused with ErrUnknownUser, which no
// audit row can record: on an adopted schema the audit table references
// the users table too. The log line stands in for the row (never a token:
// the Service does not see one).
func (s *Service) logUnrecorded(ctx context.Context, userID string, meta RequestMeta, action Action, err error) {
	if !errors.Is(err, ErrUnknownUser) {
		return
	}
	s.log.LogAttrs(ctx, slog.LevelWarn, "request of an unknown user refused; no audit row can name them",
		slog.String("user_id", userID), slog.String("action", string(action)),
		slog.String("ip_address", AuditText(meta.IPAddress)), slog.String("user_agent", AuditText(meta.UserAgent)))
}

// openOrRefuse unwraps v's master key and returns it with the vault it
// opened: v, or the row as stored now when format 1 closed after v was
// read without a lock (openLatest). When that fails it records a
// failed_fetch audit row and sets the refusal, returning a nil key.
func (o *op) openOrRefuse(ctx context.Context, v *Vault) ([]byte, *Vault, error) {
	mk, opened, err := o.s.openLatest(ctx, o.userID, v, o.tx)
	if err == nil {
		return mk, opened, nil
	}
	outcome, note := unwrapFailureAudit(err, v)
	o.s.logUnwrapFailure(ctx, o.userID, v, err)
	o.refusal = err
	return nil, v, o.audit(ctx, ActionFailedFetch, outcome, note)
}

// unwrapFailureAudit is the audit outcome and note of a failed unwrap. A
// format-1 wrap refused because format 1 is closed is answered like a
// wrap that does not open (OutcomeInternal), under a note of its own: on
// an install whose re-wrap job has upgraded every row, it is a wrap
// written behind keybroker's back.
func unwrapFailureAudit(err error, v *Vault) (Outcome, string) {
	var unavailable *UnavailableError
	switch {
	case errors.Is(err, ErrFormat1Closed):
		return OutcomeInternal, "format1-closed"
	case errors.Is(err, errFormat1Unknown):
		return OutcomeInternal, "format1-state-unreadable"
	case errors.Is(err, ErrUnknownKEK):
		return OutcomeUnknownKEK, "unknown-kek:" + v.KEKID
	case errors.As(err, &unavailable) && unavailable.Dependency == DependencyStore:
		return OutcomeStoreUnavailable, "store-unavailable"
	case IsUnavailable(err):
		return OutcomeKEKUnavailable, "kek-unavailable:" + v.KEKID
	case errors.Is(err, ErrKEKDenied):
		return OutcomeKEKDenied, "kek-denied:" + v.KEKID
	}
	return OutcomeInternal, "unwrap-failed"
}

func (s *Service) logUnwrapFailure(ctx context.Context, userID string, v *Vault, err error) {
	s.log.LogAttrs(ctx, slog.LevelError, "vault unwrap failed",
		slog.String("user_id", userID), slog.String("kek_id", v.KEKID),
		slog.Int("format_version", v.FormatVersion), slog.String("error", err.Error()))
}

func zkResult(v *Vault) *KeyResult {
	return &KeyResult{
		FormatVersion:        v.RecoveryFormatVersion,
		RequiresRecoveryCode: true,
		RecoveryWrappedMK:    deref(v.RecoveryWrappedMK),
		RecoveryIV:           deref(v.RecoveryIV),
	}
}

// Status reports the vault's metadata without unwrapping anything and
// without an audit row. A user without a vault gets the same shape.
func (s *Service) Status(ctx context.Context, userID string) (*Status, error) {
	st := &Status{}
	err := s.run(ctx, userID, RequestMeta{}, "", func(o *op) error {
		v, err := o.tx.VaultGet(ctx, false)
		if errors.Is(err, ErrNotFound) {
			return nil
		}
		if err != nil {
			return err
		}
		st.VaultExists = true
		st.HasRecoveryWrap = v.RecoveryWrappedMK != nil
		st.ZeroKnowledge = v.ZeroKnowledge
		st.RecoverySetAt = v.RecoverySetAt
		return nil
	})
	if err != nil {
		return nil, err
	}
	return st, nil
}

// Init returns the user's master key, minting and wrapping one first when
// the user has no vault. Concurrent first calls agree on one key: the
// loser of the insert race returns the winner's key.
func (s *Service) Init(ctx context.Context, userID string, meta RequestMeta) (*KeyResult, error) {
	var res *KeyResult
	err := s.sealedWrite(ctx, func() error {
		return s.initOnce(ctx, userID, meta, &res)
	})
	if err != nil {
		if res != nil {
			wipe(res.MasterKey)
		}
		return nil, err
	}
	return res, nil
}

// sealedWrite runs write, which seals under the keyring's active KEK and
// stores the wrap. When the store refuses the row because that KEK is a
// data key deleted meanwhile (ErrDataKeyDeleted: this replica had not
// reloaded since the re-wrap job deleted it), it reloads the data keys and
// runs write once more; refused again, the KEK counts as unavailable.
func (s *Service) sealedWrite(ctx context.Context, write func() error) error {
	seen := s.keyring.state.Load()
	err := write()
	if !errors.Is(err, ErrDataKeyDeleted) {
		return err
	}
	s.log.Warn("a write named a deleted data key; reloading the data keys", slog.String("kek_id", seen.active.ID()))
	if rerr := s.keyring.reloadSince(ctx, seen); rerr != nil {
		s.log.Warn("reloading the data keys", slog.String("error", rerr.Error()))
	}
	err = write()
	if errors.Is(err, ErrDataKeyDeleted) {
		return &UnavailableError{Dependency: DependencyKEK, Err: err}
	}
	return err
}

func (s *Service) initOnce(ctx context.Context, userID string, meta RequestMeta, resp **KeyResult) error {
	if *resp != nil {
		wipe((*resp).MasterKey)
		*resp = nil
	}
	var res *KeyResult
	defer func() { *resp = res }()
	return s.run(ctx, userID, meta, ActionInit, func(o *op) error {
		v, err := o.tx.VaultGet(ctx, false)
		if errors.Is(err, ErrNotFound) {
			var created bool
			created, err = s.create(ctx, o, &res)
			if created || err != nil {
				return err
			}
			// A concurrent init won the insert; hand out its key.
			v, err = o.tx.VaultGet(ctx, false)
		}
		if err != nil {
			return err
		}
		if v.ZeroKnowledge {
			res = zkResult(v)
			return o.audit(ctx, ActionInit, OutcomeOK, "already-exists-zk")
		}
		mk, opened, err := o.openOrRefuse(ctx, v)
		if mk == nil {
			return err
		}
		res = &KeyResult{MasterKey: mk, FormatVersion: opened.FormatVersion, KEKID: opened.KEKID}
		return o.audit(ctx, ActionInit, OutcomeOK, "already-exists")
	})
}

// create mints, wraps and inserts a vault for o's user. It reports false
// when a concurrent transaction inserted the user's vault first.
func (s *Service) create(ctx context.Context, o *op, res **KeyResult) (bool, error) {
	mk := newMasterKey()
	wrapped, kekID, err := s.keyring.seal(ctx, o.userID, mk)
	if err != nil {
		wipe(mk)
		return false, err
	}
	kcv := KeyCheckValue(mk)
	proof := keyProofVerifier(mk, kcv)
	v := &Vault{UserID: o.userID, CreatedAt: s.now(), RecoveryFormatVersion: 1, KeyCheck: &kcv, KeyProof: &proof}
	encodeBoundWrap(v, wrapped, kekID)
	inserted, err := o.tx.VaultInsert(ctx, v)
	if err != nil || !inserted {
		wipe(mk)
		return false, err
	}
	*res = &KeyResult{MasterKey: mk, FormatVersion: FormatBound, KEKID: kekID}
	return true, o.audit(ctx, ActionInit, OutcomeCreated, "created")
}

// Key returns the user's master key, or the recovery wrap in
// zero-knowledge mode. It returns ErrNotFound when the user has no vault,
// ErrUnknownKEK, ErrUnwrapFailed or an *UnavailableError when the wrap
// cannot be opened; every outcome is audited. Like every operation that
// writes, it returns ErrUnknownUser, logged rather than audited, when the
// store's users table does not know the user.
func (s *Service) Key(ctx context.Context, userID string, meta RequestMeta) (*KeyResult, error) {
	if userID == "" {
		return nil, fmt.Errorf("%w: empty user id", ErrInvalidArgument)
	}
	var res *KeyResult
	var err error
	if s.fetches != nil {
		res, err = s.fetchKey(ctx, userID, meta)
	} else {
		res, err = s.fastKey(ctx, userID, meta)
	}
	s.logUnrecorded(ctx, userID, meta, ActionFetch, err)
	return res, err
}

// Rotate replaces the user's master key with a fresh one (the old one is
// gone) and clears the recovery wrap, which wrapped the old key. With no
// vault it creates one. It returns ErrZKRotateForbidden in
// zero-knowledge mode.
func (s *Service) Rotate(ctx context.Context, userID string, meta RequestMeta) (*KeyResult, error) {
	// Mint and wrap before taking the row lock: a remote KEK call
	// should not hold it.
	mk := newMasterKey()
	kcv := KeyCheckValue(mk)
	proof := keyProofVerifier(mk, kcv)
	var kekID string
	err := s.sealedWrite(ctx, func() error {
		var wrapped []byte
		var err error
		if wrapped, kekID, err = s.keyring.seal(ctx, userID, mk); err != nil {
			return err
		}
		return s.rotateOnce(ctx, userID, meta, wrapped, kekID, kcv, proof)
	})
	if err != nil {
		wipe(mk)
		return nil, err
	}
	return &KeyResult{MasterKey: mk, FormatVersion: FormatBound, KEKID: kekID}, nil
}

func (s *Service) rotateOnce(ctx context.Context, userID string, meta RequestMeta, wrapped []byte, kekID, kcv, proof string) error {
	return s.run(ctx, userID, meta, ActionRotate, func(o *op) error {
		v, err := o.tx.VaultGet(ctx, true)
		if errors.Is(err, ErrNotFound) {
			fresh := &Vault{UserID: userID, CreatedAt: s.now(), RecoveryFormatVersion: 1, KeyCheck: &kcv, KeyProof: &proof}
			encodeBoundWrap(fresh, wrapped, kekID)
			var inserted bool
			if inserted, err = o.tx.VaultInsert(ctx, fresh); err != nil {
				return err
			}
			if inserted {
				return o.audit(ctx, ActionRotate, OutcomeCreated, "init-on-rotate")
			}
			// A concurrent init won the insert; rotate its vault.
			v, err = o.tx.VaultGet(ctx, true)
		}
		if err != nil {
			return err
		}
		if v.ZeroKnowledge {
			return o.refuse(ctx, ActionRotate, "zk-rotate-forbidden", ErrZKRotateForbidden)
		}
		now := s.now()
		encodeBoundWrap(v, wrapped, kekID)
		v.KeyCheck, v.KeyProof = &kcv, &proof
		v.RotatedAt = &now
		v.RecoveryWrappedMK, v.RecoveryIV, v.RecoverySetAt = nil, nil, nil
		if err := o.tx.VaultUpdate(ctx, v); err != nil {
			return err
		}
		return o.audit(ctx, ActionRotate, OutcomeOK, "")
	})
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
