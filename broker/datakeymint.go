package broker

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
)

// Making data keys: a new one (first, when the newest is too old, or on request) and moving one under a new remote KEK.

// tooOld reports whether dk is past the maximum age.
func (d *dataKeySource) tooOld(dk *DataKey) bool {
	return d.cfg.DataKeyMaxAge > 0 && d.cfg.Now().Sub(dk.CreatedAt) >= d.cfg.DataKeyMaxAge
}

// mintAfter mints a data key after the newest, after; errRaced when
// another replica minted first.
func (d *dataKeySource) mintAfter(ctx context.Context, after string) (KEK, error) {
	local, minted, err := d.mint(ctx, after)
	if err != nil {
		return nil, err
	}
	if !minted {
		return nil, errRaced
	}
	return local, nil
}

// mint makes and wraps a new data key under the active remote KEK and
// stores it as the newest, provided the newest is still after. It reports
// false, and destroys what it made, when another data key was stored
// first.
func (d *dataKeySource) mint(ctx context.Context, after string) (KEK, bool, error) {
	var raw [9]byte
	rand.Read(raw[:])
	id := "dk-" + base64.RawURLEncoding.EncodeToString(raw[:])
	key := newMasterKey()
	defer wipe(key)
	first, more, err := d.mintWraps(ctx, id, key)
	if err != nil {
		return nil, false, fmt.Errorf("data keys: wrap a new data key: %w", classifyKEKError(errors.New("wrap failed"), err))
	}
	inserted, err := d.cfg.DataKeys.DataKeyInsert(ctx, DataKey{ID: id, WrappedBy: first.KEKID, Wrapped: first.Wrapped, Wraps: more, CreatedAt: d.cfg.Now()}, after)
	if err != nil {
		return nil, false, fmt.Errorf("data keys: store: %w", err)
	}
	if !inserted {
		d.cfg.Logger.Info("another replica minted a data key first", slog.String("after", after))
		return nil, false, nil
	}
	d.cfg.Logger.Info("data key created", slog.String("data_key_id", id), slog.String("kek_id", first.KEKID),
		slog.String("previous_data_key_id", after))
	local, err := d.cfg.NewLocalKEK(id, key)
	if err != nil {
		return nil, false, err
	}
	return local, true, nil
}

// moveDataKey re-wraps dk (whose plaintext is key) under the active remote
// KEK.
func (d *dataKeySource) moveDataKey(ctx context.Context, dk *DataKey, key []byte) (bool, error) {
	remote := d.remote()
	wrapped, err := d.keyring.wrap(ctx, remote, key, DataKeyBinding(dk.ID, remote.ID()))
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
