package broker

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"
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
// rows; rotating the data key is an ordinary row re-wrap.

// DataKey is a data key as stored: wrapped by the remote KEK WrappedBy.
type DataKey struct {
	ID        string // recorded as kek_id on the rows it wraps
	WrappedBy string // id of the remote KEK that wraps it
	Wrapped   []byte
	CreatedAt time.Time
}

// DataKeyStore keeps the data-key table. Data keys are ciphertext under a
// KMS and not per-user, so the table has no row-level security.
type DataKeyStore interface {
	// DataKeyList returns every data key, oldest first.
	DataKeyList(ctx context.Context) ([]DataKey, error)
	// DataKeyInsert stores a new data key.
	DataKeyInsert(ctx context.Context, dk DataKey) error
	// DataKeyRewrap replaces the wrap of data key id, provided it is still
	// wrapped by fromKEK; it reports whether it did.
	DataKeyRewrap(ctx context.Context, id, fromKEK string, wrapped []byte, toKEK string) (bool, error)
}

// KeyringConfig configures LoadKeyring.
type KeyringConfig struct {
	// Active makes new wraps (through a data key when it is cached).
	Active KEK
	// DecryptOnly KEKs open rows they wrapped.
	DecryptOnly []KEK
	// Cached names the KEKs (among Active and DecryptOnly) in cached
	// envelope mode: when the active KEK is one, new wraps go through a
	// data key.
	Cached []string
	// DataKeys stores the data keys; required with Cached. When set, data
	// keys wrapped by any configured KEK are loaded, so rows written in
	// cached mode keep opening after a KEK's URI says cache=off.
	DataKeys DataKeyStore
	// NewLocalKEK makes the local KEK of a data key (AES-256-GCM); required
	// with Cached. Injected because broker imports no provider.
	NewLocalKEK func(id string, key []byte) (KEK, error)
	// RefreshMinInterval rate-limits reloads triggered by an unknown id;
	// default 10s.
	RefreshMinInterval time.Duration
	Logger             *slog.Logger
}

func (c *KeyringConfig) validate() error {
	if c.Active == nil {
		return errors.New("broker: KeyringConfig.Active is required")
	}
	if len(c.Cached) == 0 && c.DataKeys == nil {
		return nil
	}
	if c.DataKeys == nil {
		return errors.New("broker: KeyringConfig.DataKeys is required in cached envelope mode")
	}
	if c.NewLocalKEK == nil {
		return errors.New("broker: KeyringConfig.NewLocalKEK is required in cached envelope mode")
	}
	if c.RefreshMinInterval == 0 {
		c.RefreshMinInterval = 10 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

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
		return NewKeyring(cfg.Active, cfg.DecryptOnly...)
	}
	src := &dataKeySource{cfg: cfg, remotes: map[string]KEK{}, cached: map[string]bool{}}
	for _, kek := range append([]KEK{cfg.Active}, cfg.DecryptOnly...) {
		src.remotes[kek.ID()] = kek
	}
	for _, id := range cfg.Cached {
		if src.remotes[id] == nil {
			return nil, fmt.Errorf("broker: cached KEK %q is not configured", id)
		}
		src.cached[id] = true
	}
	k := &Keyring{dataKeys: src}
	src.keyring = k
	// Until the data keys load, the configured KEKs still open the rows
	// they wrapped directly; new wraps fail as unavailable.
	pending := &unloadedKEK{id: cfg.Active.ID()}
	st, err := newKeyringState(pending, cfg.DecryptOnly)
	if err != nil {
		return nil, err
	}
	if !src.isCached(cfg.Active.ID()) {
		if st, err = newKeyringState(cfg.Active, cfg.DecryptOnly); err != nil {
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
// other replicas made and drops those the remote KEK now refuses (a
// revoked KMS key takes effect here). A remote that cannot be reached
// keeps the keys already loaded. Without envelope mode it does nothing.
func (k *Keyring) Refresh(ctx context.Context) error {
	if k.dataKeys == nil {
		return nil
	}
	err := k.dataKeys.refresh(ctx)
	k.dataKeys.setErr(err)
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

	errMu   sync.Mutex
	lastErr error
}

func (d *dataKeySource) isCached(id string) bool { return d.cached[id] }

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

func dataKeyBinding(id, wrappedBy string) map[string]string {
	return map[string]string{"purpose": "keybroker-data-key", "data_key_id": id, BindingKEKID: wrappedBy}
}

// errRaced means another replica changed the data keys while this one
// loaded them; loading again sees the change.
var errRaced = errors.New("data keys: changed by another replica")

// refresh loads every data key it can open and installs a new state.
func (d *dataKeySource) refresh(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.lastAttempt = time.Now()
	var err error
	for range 3 {
		if err = d.load(ctx); !errors.Is(err, errRaced) {
			break
		}
	}
	return err
}

func (d *dataKeySource) load(ctx context.Context) error {
	old := d.keyring.state.Load()

	list, err := d.cfg.DataKeys.DataKeyList(ctx)
	if err != nil {
		return fmt.Errorf("data keys: %w", err)
	}
	locals := map[string]KEK{}
	var newestByActive, newestAny *DataKey
	var newestAnyKey []byte
	defer func() { wipe(newestAnyKey) }()
	var firstErr error
	activeID := d.cfg.Active.ID()
	for i := range list {
		dk := &list[i]
		remote := d.remotes[dk.WrappedBy]
		if remote == nil {
			continue // wrapped by a KEK that is not configured (any more)
		}
		key, err := remote.Unwrap(ctx, dk.Wrapped, dataKeyBinding(dk.ID, dk.WrappedBy))
		if err != nil {
			err = classifyKEKError(ErrUnwrapFailed, err)
			if prev, ok := old.byID[dk.ID]; ok && IsUnavailable(err) {
				// A KMS outage keeps what is loaded: fetches go on.
				locals[dk.ID] = prev
				if dk.WrappedBy == activeID {
					newestByActive = dk
				}
				continue
			}
			if firstErr == nil {
				firstErr = fmt.Errorf("data key %s (wrapped by %s): %w", dk.ID, dk.WrappedBy, err)
			}
			continue
		}
		local, err := d.cfg.NewLocalKEK(dk.ID, key)
		if err != nil {
			wipe(key)
			return fmt.Errorf("data key %s: %w", dk.ID, err)
		}
		locals[dk.ID] = local
		if dk.WrappedBy == activeID {
			newestByActive = dk
		}
		wipe(newestAnyKey)
		newestAny, newestAnyKey = dk, key
	}
	if firstErr != nil {
		d.cfg.Logger.Warn("some data keys did not load", slog.String("error", firstErr.Error()))
	}

	active := d.cfg.Active
	if d.isCached(activeID) {
		switch {
		case newestByActive != nil:
			active = locals[newestByActive.ID]
		case newestAny != nil:
			// The remote KEK changed: re-wrap the newest data key under the
			// new one, so user rows keep their kek_id.
			moved, err := d.moveDataKey(ctx, newestAny, newestAnyKey)
			if err != nil {
				return err
			}
			if !moved {
				return errRaced
			}
			active = locals[newestAny.ID]
		case firstErr != nil:
			// The keys exist but cannot be opened (a revoked or disabled
			// KMS key): do not make another; new wraps fail until an
			// operator acts, and what cannot be opened is dropped.
			active = &unloadedKEK{id: activeID}
		default:
			local, err := d.createDataKey(ctx)
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
	decryptOnly = append(decryptOnly, d.cfg.DecryptOnly...)
	if active.ID() != activeID {
		decryptOnly = append(decryptOnly, d.cfg.Active) // rows it wrapped directly (cache off)
	}
	st, err := newKeyringState(active, decryptOnly)
	if err != nil {
		return err
	}
	d.keyring.state.Store(st)
	return firstErr
}

// createDataKey makes, wraps and stores a new data key for the active
// remote KEK.
func (d *dataKeySource) createDataKey(ctx context.Context) (KEK, error) {
	var raw [9]byte
	rand.Read(raw[:])
	id := "dk-" + base64.RawURLEncoding.EncodeToString(raw[:])
	key := newMasterKey()
	defer wipe(key)
	remote := d.cfg.Active
	wrapped, err := remote.Wrap(ctx, key, dataKeyBinding(id, remote.ID()))
	if err != nil {
		return nil, fmt.Errorf("data keys: wrap a new data key: %w", classifyKEKError(errors.New("wrap failed"), err))
	}
	if err := d.cfg.DataKeys.DataKeyInsert(ctx, DataKey{ID: id, WrappedBy: remote.ID(), Wrapped: wrapped, CreatedAt: time.Now()}); err != nil {
		return nil, fmt.Errorf("data keys: store: %w", err)
	}
	d.cfg.Logger.Info("data key created", slog.String("data_key_id", id), slog.String("kek_id", remote.ID()))
	return d.cfg.NewLocalKEK(id, key)
}

// moveDataKey re-wraps dk (whose plaintext is key) under the active remote
// KEK.
func (d *dataKeySource) moveDataKey(ctx context.Context, dk *DataKey, key []byte) (bool, error) {
	remote := d.cfg.Active
	wrapped, err := remote.Wrap(ctx, key, dataKeyBinding(dk.ID, remote.ID()))
	if err != nil {
		return false, fmt.Errorf("data keys: re-wrap %s: %w", dk.ID, classifyKEKError(errors.New("wrap failed"), err))
	}
	moved, err := d.cfg.DataKeys.DataKeyRewrap(ctx, dk.ID, dk.WrappedBy, wrapped, remote.ID())
	if err != nil {
		return false, fmt.Errorf("data keys: store: %w", err)
	}
	if moved {
		d.cfg.Logger.Info("data key moved to a new remote KEK", slog.String("data_key_id", dk.ID),
			slog.String("from_kek_id", dk.WrappedBy), slog.String("kek_id", remote.ID()))
	}
	return moved, nil
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
