package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keybroker/keybroker/kek"
)

// Cached envelope mode
//
// A remote KEK (a KMS) in cached mode does not wrap user keys itself. The
// keyring makes a local 32-byte data key, has the remote KEK wrap it, and
// stores it in the data-key table; user master keys are wrapped locally
// under the data key (format 2, bound as always), and rows record the data
// key's id as their kek_id. A server unwraps the data keys once at start,
// so a key fetch makes no KMS call and a KMS outage after start does not
// stop fetches. Moving to another remote KEK re-wraps only the data-key
// rows.
//
// Data keys rotate. The store orders them (DataKeyList, oldest first) and
// every replica wraps under the newest one it can open. A new one is
// minted by an operator (RotateDataKey) or, with a maximum age, by the
// first replica whose reload finds the newest too old; the store inserts
// it only if the newest is still the one the minter saw, so replicas that
// mint at once make one key. The re-wrap job moves rows to the newest and
// deletes a data key no row names, once a grace period longer than the
// replicas' reload interval has passed since a newer one was made. A
// replica that has not reloaded since, or whose reload failed, may still
// wrap under the deleted key: the store refuses such a write
// (ErrDataKeyDeleted) and the service reloads and retries it, so no row is
// ever stored under a key that no longer exists. A reload zeroes the local
// KEK of every data key it no longer finds (kek.Destroyer).

// LoadKeyring builds the keyring. With cached KEKs it loads the data keys,
// creating the first one for the active KEK (or re-wrapping the newest one
// under it after the remote KEK changed). When the remote KEK cannot be
// reached it still returns a keyring, one whose Ready reports why and
// whose wraps fail as unavailable until Refresh succeeds: the server can
// start, report not-ready, and recover by itself.
func LoadKeyring(ctx context.Context, cfg KeyringConfig) (*Keyring, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	if len(cfg.Cached) == 0 && cfg.DataKeys == nil {
		k, err := NewKeyring(cfg.Active, append(slices.Clone(cfg.Also), cfg.DecryptOnly...)...)
		if err != nil {
			return nil, err
		}
		k.onCall = cfg.OnKEKCall
		k.writeUnder(cfg.Hold)
		return k, nil
	}
	src := &dataKeySource{cfg: cfg, remotes: map[string]KEK{}, cached: map[string]bool{}, loaded: map[string]KEK{}}
	configured := append(append([]KEK{cfg.Active}, cfg.Also...), cfg.DecryptOnly...)
	for _, kek := range configured {
		src.remotes[kek.ID()] = kek
	}
	for _, id := range cfg.Cached {
		if src.remotes[id] == nil {
			return nil, fmt.Errorf("broker: cached KEK %q is not configured", id)
		}
		src.cached[id] = true
	}
	k := &Keyring{dataKeys: src, onCall: cfg.OnKEKCall, configured: configured}
	src.keyring = k
	src.holdAt(cfg.Hold)
	// Until the data keys load, the configured KEKs still open the rows
	// they wrapped directly; new wraps fail as unavailable.
	pending := &unloadedKEK{id: cfg.Active.ID()}
	st, err := newKeyringState(pending, src.openers())
	if err != nil {
		return nil, err
	}
	if !src.isCached(cfg.Active.ID()) {
		if st, err = newKeyringState(cfg.Active, src.openers()); err != nil {
			return nil, err
		}
	}
	k.state.Store(st)
	if err := src.refresh(ctx); err != nil {
		src.setErr(err)
		cfg.Logger.Error("data keys not loaded; retrying", slog.String("error", err.Error()))
	}
	return k, nil
}

// Ready reports whether the keyring can wrap and open: in envelope mode,
// whether the data keys are loaded.
func (k *Keyring) Ready() error {
	if k.dataKeys == nil {
		return nil
	}
	return k.dataKeys.err()
}

// Refresh reloads the data keys in envelope mode: it picks up data keys
// other replicas made, drops those the remote KEK now refuses (a revoked
// KMS key takes effect here) and those deleted from the store, zeroing
// what it drops, and mints a new data key when the newest is older than
// the maximum age. A remote that cannot be reached keeps the keys already
// loaded. Without envelope mode it does nothing.
func (k *Keyring) Refresh(ctx context.Context) error {
	if k.dataKeys == nil {
		return nil
	}
	err := k.dataKeys.refresh(ctx)
	k.dataKeys.setErr(err)
	return err
}

// RotateDataKey mints a new data key under the active remote KEK and makes
// it the one this keyring wraps under; other replicas take it up at their
// next reload, and the re-wrap job's runner before its next run. It
// returns the id of the data key this call minted (minted true), or, when
// another replica minted one after the same newest key at the same moment,
// that one (minted false: no second one is made). The keyring then wraps
// under that key, or under a newer one when another rotation stored its
// key right after it (its reload finds that one). It returns ErrNotCachedMode
// when the active KEK is not in cached envelope mode, and the store's or
// the KMS's errors (*UnavailableError for an outage).
func (k *Keyring) RotateDataKey(ctx context.Context) (id string, minted bool, err error) {
	if k.dataKeys == nil || !k.dataKeys.isCached(k.dataKeys.cfg.Active.ID()) {
		return "", false, ErrNotCachedMode
	}
	return k.dataKeys.rotate(ctx)
}

// syncDataKeys reloads the data keys when the store's newest is not the
// one this keyring wraps under, or is past the maximum age (the reload
// then mints the next one). The re-wrap job's runner calls it before each
// run, so that rows move to a data key minted elsewhere, and a data key
// past its age is replaced, within a job interval rather than a reload
// interval; when nothing changed it costs one read of the data-key table
// and no KMS call.
func (k *Keyring) syncDataKeys(ctx context.Context) error {
	d := k.dataKeys
	if d == nil || !d.isCached(d.cfg.Active.ID()) {
		return nil
	}
	list, err := d.cfg.DataKeys.DataKeyList(ctx)
	if err != nil {
		return fmt.Errorf("data keys: %w", err)
	}
	for i := len(list) - 1; i >= 0; i-- {
		if d.remotes[list[i].WrappedBy] != nil {
			if list[i].ID == k.ActiveID() && !d.tooOld(&list[i]) {
				return nil
			}
			break
		}
	}
	return k.Refresh(ctx)
}

// reloadSince reloads the data keys unless they were reloaded after the
// keyring was in state seen: of many writes refused at once for a deleted
// data key, one reloads and the others use its result.
func (k *Keyring) reloadSince(ctx context.Context, seen *keyringState) error {
	d := k.dataKeys
	if d == nil {
		return nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if k.state.Load() != seen {
		return d.err()
	}
	err := d.reloadLocked(ctx)
	d.setErr(err)
	return err
}

// dataKeySource loads data keys into a keyring.
type dataKeySource struct {
	cfg     KeyringConfig
	remotes map[string]KEK  // every configured KEK by id: any may wrap data keys
	cached  map[string]bool // KEKs in cached envelope mode
	keyring *Keyring

	mu          sync.Mutex // one load at a time
	lastAttempt time.Time
	// loaded holds the local KEK of every data key in the keyring's
	// state. A reload keeps these objects for the keys it finds again,
	// so no copy of a key schedule is left behind per reload, and
	// destroys the others.
	loaded map[string]KEK
	// hold is the remote KEK the rollout holds new wraps at (rollout.go);
	// nil: the configured active one.
	hold atomic.Pointer[KEK]

	errMu   sync.Mutex
	lastErr error

	statsMu sync.Mutex
	stats   map[string]*kekOutcome // per KEK id (datakeywraps.go)
	list    []DataKey              // the data keys as last listed

	adding atomic.Bool    // an addWraps runs
	addWG  sync.WaitGroup // addWraps in the background
}

func (d *dataKeySource) isCached(id string) bool { return d.cached[id] }

// openers are the configured KEKs besides the active one: they open rows
// they wrapped directly (with cache=off).
func (d *dataKeySource) openers() []KEK {
	return append(slices.Clone(d.cfg.Also), d.cfg.DecryptOnly...)
}

func (d *dataKeySource) setErr(err error) {
	d.errMu.Lock()
	d.lastErr = err
	d.errMu.Unlock()
}

func (d *dataKeySource) err() error {
	d.errMu.Lock()
	defer d.errMu.Unlock()
	return d.lastErr
}

// refreshOnMiss reloads unless a load ran within RefreshMinInterval; it
// reports whether it reloaded successfully.
func (d *dataKeySource) refreshOnMiss(ctx context.Context) bool {
	d.mu.Lock()
	recent := time.Since(d.lastAttempt) < d.cfg.RefreshMinInterval
	d.mu.Unlock()
	if recent {
		return false
	}
	err := d.refresh(ctx)
	d.setErr(err)
	return err == nil
}

// errRaced means another replica changed the data keys while this one
// loaded them; loading again sees the change.
var errRaced = errors.New("data keys: changed by another replica")

// refresh loads every data key it can open and installs a new state.
func (d *dataKeySource) refresh(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.reloadLocked(ctx)
}

func (d *dataKeySource) reloadLocked(ctx context.Context) error {
	d.lastAttempt = time.Now()
	var err error
	for range 3 {
		if err = d.load(ctx); !errors.Is(err, errRaced) {
			break
		}
	}
	return err
}

// rotate mints a data key after the store's newest and reloads.
func (d *dataKeySource) rotate(ctx context.Context) (string, bool, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	list, err := d.cfg.DataKeys.DataKeyList(ctx)
	if err != nil {
		return "", false, fmt.Errorf("data keys: %w", err)
	}
	after := ""
	if len(list) > 0 {
		after = list[len(list)-1].ID
	}
	local, minted, err := d.mint(ctx, after)
	if err != nil {
		return "", false, err
	}
	if minted {
		// The reload finds it in the store and keeps this object.
		d.loaded[local.ID()] = local
	}
	err = d.reloadLocked(ctx)
	d.setErr(err)
	id := d.keyring.ActiveID()
	if minted {
		id = local.ID()
	}
	return id, minted, err
}

// load lists the data keys, opens every one it can and installs a new
// state: new wraps go under the newest data key it opened, moved under
// the active remote KEK when another one wraps it. It makes the first
// data key when there is none, and a new one when the newest is older
// than DataKeyMaxAge. Keys loaded before and not found again are
// destroyed once the new state is in place.
func (d *dataKeySource) load(ctx context.Context) (err error) {
	list, err := d.cfg.DataKeys.DataKeyList(ctx)
	if err != nil {
		return fmt.Errorf("data keys: %w", err)
	}
	d.noteList(list)
	locals := map[string]KEK{}
	installed := false
	defer func() {
		if !installed {
			d.discard(locals) // objects made by this load and not kept
		}
	}()
	fresh := map[string][]byte{} // plaintexts unwrapped by this load, for a move
	defer func() {
		for _, key := range fresh {
			wipe(key)
		}
	}()
	// newest is the newest data key a configured KEK wraps; chosen the
	// newest one that opened, which is newest unless a KMS failed on it.
	var newest, chosen *DataKey
	var firstErr error
	target := d.remote() // the active remote KEK, unless the rollout holds another
	activeID := target.ID()
	for i := range list {
		dk := &list[i]
		key, configured, err := d.openDataKey(ctx, dk)
		if !configured {
			continue // wrapped by KEKs that are not configured (any more)
		}
		newest = dk
		if err != nil {
			if prev, ok := d.loaded[dk.ID]; ok && IsUnavailable(err) {
				// A KMS outage keeps what is loaded: fetches go on.
				locals[dk.ID] = prev
				chosen = dk
				continue
			}
			if firstErr == nil {
				firstErr = fmt.Errorf("data key %s (wrapped by %s): %w", dk.ID, wrapIDs(dk), err)
			}
			continue
		}
		fresh[dk.ID] = key
		local := d.loaded[dk.ID] // a data key's plaintext never changes
		if local == nil {
			if local, err = d.cfg.NewLocalKEK(dk.ID, key); err != nil {
				return fmt.Errorf("data key %s: %w", dk.ID, err)
			}
		}
		locals[dk.ID] = local
		chosen = dk
	}
	if firstErr != nil {
		d.cfg.Logger.Warn("some data keys did not load", slog.String("error", firstErr.Error()))
	}

	active := target
	if d.isCached(activeID) {
		switch {
		case chosen != nil:
			if key := fresh[chosen.ID]; key != nil && d.preference(chosen.WrappedBy) > len(d.cfg.Also) && !d.cfg.ReadOnly {
				// The remote KEK changed: re-wrap the data key under the
				// new one, so user rows keep their kek_id.
				moved, err := d.moveDataKey(ctx, chosen, key)
				if err != nil && len(d.cfg.Also) > 0 && IsUnavailable(err) {
					// Another KEK of the list opened it: move it later.
					d.cfg.Logger.Warn("data key not moved to the active KEK yet", slog.String("data_key_id", chosen.ID), slog.String("error", err.Error()))
					err, moved = nil, true
				}
				if err != nil {
					return err
				}
				if !moved {
					return errRaced
				}
			}
			active = locals[chosen.ID]
			if chosen == newest && newest == &list[len(list)-1] && d.tooOld(newest) && !d.cfg.ReadOnly {
				local, err := d.mintAfter(ctx, newest.ID)
				if errors.Is(err, errRaced) {
					return err // another replica minted it: load that one
				}
				if err != nil {
					// Keep wrapping under the old one; the next reload
					// tries again.
					d.cfg.Logger.Warn("data key older than the maximum age; minting a new one failed",
						slog.String("data_key_id", newest.ID), slog.String("error", err.Error()))
					break
				}
				locals[local.ID()] = local
				active = local
			}
		case firstErr != nil, d.cfg.ReadOnly:
			// The keys exist but cannot be opened (a revoked or disabled
			// KMS key): do not make another; new wraps fail until an
			// operator acts, and what cannot be opened is dropped. Or
			// there is none yet and this keyring only looks: serve makes
			// the first.
			active = &unloadedKEK{id: activeID}
		default:
			after := ""
			if len(list) > 0 {
				after = list[len(list)-1].ID
			}
			local, err := d.mintAfter(ctx, after)
			if err != nil {
				return err
			}
			locals[local.ID()] = local
			active = local
		}
	}

	decryptOnly := make([]KEK, 0, len(locals)+len(d.cfg.DecryptOnly)+1)
	for id, kek := range locals {
		if id != active.ID() {
			decryptOnly = append(decryptOnly, kek)
		}
	}
	for _, kek := range d.keyring.configured { // rows they wrapped directly (cache off)
		if kek.ID() != active.ID() {
			decryptOnly = append(decryptOnly, kek)
		}
	}
	st, err := newKeyringState(active, decryptOnly)
	if err != nil {
		return err
	}
	d.keyring.state.Store(st)
	installed = true
	// Calls already under way on the old state finish first: Destroy
	// waits for them.
	for id, kek := range d.loaded {
		if locals[id] != kek {
			destroyKEK(kek)
			d.cfg.Logger.Info("data key unloaded and zeroed", slog.String("data_key_id", id))
		}
	}
	d.loaded = locals
	if d.cfg.Also != nil && !d.cfg.ReadOnly {
		d.addWraps(ctx, list, fresh)
	}
	return firstErr
}

// wrapIDs names the KEKs that wrap dk.
func wrapIDs(dk *DataKey) string {
	var ids []string
	for _, w := range dk.AllWraps() {
		ids = append(ids, w.KEKID)
	}
	return strings.Join(ids, ", ")
}

// discard destroys the local KEKs of locals that are not loaded.
func (d *dataKeySource) discard(locals map[string]KEK) {
	for id, kek := range locals {
		if d.loaded[id] != kek {
			destroyKEK(kek)
		}
	}
}

func destroyKEK(k KEK) {
	if d, ok := k.(kek.Destroyer); ok {
		d.Destroy()
	}
}

// unloadedKEK stands in for the active data key until it loads.
type unloadedKEK struct{ id string }

func (u *unloadedKEK) ID() string { return u.id }

func (u *unloadedKEK) Wrap(context.Context, []byte, map[string]string) ([]byte, error) {
	return nil, &UnavailableError{Dependency: DependencyKEK, Err: errors.New("data keys not loaded yet")}
}

func (u *unloadedKEK) Unwrap(context.Context, []byte, map[string]string) ([]byte, error) {
	return nil, &UnavailableError{Dependency: DependencyKEK, Err: errors.New("data keys not loaded yet")}
}
