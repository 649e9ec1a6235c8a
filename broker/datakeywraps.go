package broker

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"
)

// Several KEKs per data key
//
// With KeyringConfig.Also, every data key is wrapped under the active
// remote KEK and under each of Also (two KMS regions, AWS and Google
// Cloud, a KMS and Vault Transit), each wrap bound to its own KEK id.
// Any one of them opens it: a load asks every configured KEK that wraps
// a data key at once and takes the first plaintext back, so a replica
// that starts while one KMS is down is ready as soon as another answers
// (each call bounded by its provider's timeout=). The others' answers
// are still awaited, in the background, for the per-KEK state
// (KEKDataKeys). A KEK added to the list wraps the existing data keys at
// the next load, in the background; a data key minted while a KEK is
// down gets that KEK's wrap once it is back.

// DataKeyWrap is one wrap of a data key by a remote KEK, bound like every
// data-key wrap (DataKeyBinding with that KEK's id).
type DataKeyWrap struct {
	KEKID   string
	Wrapped []byte
}

// AllWraps returns every wrap of dk, its first one (WrappedBy) first.
func (dk *DataKey) AllWraps() []DataKeyWrap {
	out := []DataKeyWrap{{KEKID: dk.WrappedBy, Wrapped: dk.Wrapped}}
	for _, w := range dk.Wraps {
		if w.KEKID != dk.WrappedBy {
			out = append(out, w)
		}
	}
	return out
}

// wrappedBy reports whether kekID wraps dk.
func (dk *DataKey) wrappedBy(kekID string) bool {
	for _, w := range dk.AllWraps() {
		if w.KEKID == kekID {
			return true
		}
	}
	return false
}

// dataKeyOpenBound bounds the calls a load leaves running in the
// background once another KEK opened the data key; a provider's own
// timeout= is normally much shorter.
const dataKeyOpenBound = time.Minute

// wrapping lists the KEKs that wrap every data key, in order of
// preference: the active one, then Also.
func (d *dataKeySource) wrapping() []KEK {
	remote := d.remote() // the active KEK, unless the rollout holds another (rollout.go)
	keks := []KEK{remote}
	for _, k := range d.cfg.Also {
		if k.ID() != remote.ID() {
			keks = append(keks, k)
		}
	}
	return keks
}

// preference ranks a configured KEK: the wrapping ones in order, then
// the decrypt-only ones.
func (d *dataKeySource) preference(id string) int {
	for i, k := range d.wrapping() {
		if k.ID() == id {
			return i
		}
	}
	return len(d.cfg.Also) + 1
}

// openDataKey unwraps dk with the configured KEKs that wrap it; when
// several do, with all at once, returning the first plaintext. It
// returns configured false when no configured KEK wraps dk. When every
// KEK fails, the error is an outage if any KEK's was (the data key may
// open again by itself), else the first refusal.
func (d *dataKeySource) openDataKey(ctx context.Context, dk *DataKey) (key []byte, configured bool, err error) {
	var wraps []DataKeyWrap
	for _, w := range dk.AllWraps() {
		if d.remotes[w.KEKID] != nil {
			wraps = append(wraps, w)
		}
	}
	if len(wraps) == 0 {
		return nil, false, nil
	}
	slices.SortStableFunc(wraps, func(a, b DataKeyWrap) int { return d.preference(a.KEKID) - d.preference(b.KEKID) })
	if len(wraps) == 1 {
		key, err := d.unwrapOne(ctx, dk, wraps[0])
		return key, true, err
	}
	type result struct {
		key []byte
		err error
	}
	results := make(chan result, len(wraps))
	bg, cancel := context.WithTimeout(context.WithoutCancel(ctx), dataKeyOpenBound)
	var wg sync.WaitGroup
	for _, w := range wraps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			key, err := d.unwrapOne(bg, dk, w)
			results <- result{key, err}
		}()
	}
	go func() { wg.Wait(); cancel(); close(results) }()
	var errs []error
	for {
		select {
		case r, ok := <-results:
			if !ok {
				return nil, true, pickDataKeyError(dk, errs)
			}
			if r.err != nil {
				errs = append(errs, r.err)
				continue
			}
			go func() { // the others: wipe what they open
				for r := range results {
					wipe(r.key)
				}
			}()
			return r.key, true, nil
		case <-ctx.Done():
			go func() {
				for r := range results {
					wipe(r.key)
				}
			}()
			return nil, true, &UnavailableError{Dependency: DependencyKEK, Err: ctx.Err()}
		}
	}
}

// pickDataKeyError is the error of a data key no KEK opened.
func pickDataKeyError(dk *DataKey, errs []error) error {
	for _, err := range errs {
		if IsUnavailable(err) {
			return err
		}
	}
	if len(errs) == 0 {
		return fmt.Errorf("data key %s: no KEK answered", dk.ID)
	}
	return errs[0]
}

// unwrapOne unwraps dk's wrap w and records the outcome for KEKDataKeys.
func (d *dataKeySource) unwrapOne(ctx context.Context, dk *DataKey, w DataKeyWrap) ([]byte, error) {
	key, err := d.keyring.unwrap(ctx, d.remotes[w.KEKID], w.Wrapped, DataKeyBinding(dk.ID, w.KEKID))
	if err != nil {
		err = classifyKEKError(ErrUnwrapFailed, err)
	}
	d.record(w.KEKID, dk.ID, err)
	return key, err
}

// mintWraps wraps a new data key's plaintext under every wrapping KEK at
// once. The first wrap is the active KEK's when it answers, else the
// first that did; the data key needs one.
func (d *dataKeySource) mintWraps(ctx context.Context, id string, key []byte) (first DataKeyWrap, more []DataKeyWrap, err error) {
	keks := d.wrapping()
	wraps := make([][]byte, len(keks))
	errs := make([]error, len(keks))
	var wg sync.WaitGroup
	for i, remote := range keks {
		wg.Add(1)
		go func() {
			defer wg.Done()
			wraps[i], errs[i] = d.keyring.wrap(ctx, remote, key, DataKeyBinding(id, remote.ID()))
		}()
	}
	wg.Wait()
	for i, remote := range keks {
		switch {
		case errs[i] != nil:
			if len(keks) > 1 {
				d.cfg.Logger.Warn("a new data key is not wrapped by one of its KEKs; it is added when that KEK answers",
					slog.String("data_key_id", id), slog.String("kek_id", remote.ID()), slog.String("error", errs[i].Error()))
			}
		case first.KEKID == "":
			first = DataKeyWrap{KEKID: remote.ID(), Wrapped: wraps[i]}
		default:
			more = append(more, DataKeyWrap{KEKID: remote.ID(), Wrapped: wraps[i]})
		}
	}
	if first.KEKID == "" {
		return first, nil, errs[0]
	}
	return first, more, nil
}

// addWraps wraps the data keys it opened under each wrapping KEK that
// does not wrap them yet, in the background: a KEK that was just added to
// the list, or was down when a data key was minted. One runs at a time;
// a load that finds one running leaves the work to the next load. It
// wipes keys when done.
func (d *dataKeySource) addWraps(ctx context.Context, list []DataKey, keys map[string][]byte) {
	type job struct {
		dk     *DataKey
		remote KEK
	}
	var jobs []job
	for i := range list {
		dk := &list[i]
		if keys[dk.ID] == nil {
			continue
		}
		for _, remote := range d.wrapping() {
			if !dk.wrappedBy(remote.ID()) {
				jobs = append(jobs, job{dk, remote})
			}
		}
	}
	store, ok := d.cfg.DataKeys.(DataKeyWrapStore)
	if len(jobs) == 0 || !ok || !d.adding.CompareAndSwap(false, true) {
		return
	}
	copies := map[string][]byte{}
	for _, j := range jobs {
		if copies[j.dk.ID] == nil {
			copies[j.dk.ID] = slices.Clone(keys[j.dk.ID])
		}
	}
	d.addWG.Add(1)
	go func() {
		defer d.addWG.Done()
		defer d.adding.Store(false)
		defer func() {
			for _, key := range copies {
				wipe(key)
			}
		}()
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), dataKeyOpenBound)
		defer cancel()
		failed := map[string]bool{} // a KEK that failed once is not asked again in this run
		added := false
		defer func() {
			if !added {
				return
			}
			// Status shows the new wraps now, not at the next reload.
			if list, err := d.cfg.DataKeys.DataKeyList(ctx); err == nil {
				d.noteList(list)
			}
		}()
		for _, j := range jobs {
			id := j.remote.ID()
			if failed[id] {
				continue
			}
			wrapped, err := d.keyring.wrap(ctx, j.remote, copies[j.dk.ID], DataKeyBinding(j.dk.ID, id))
			if err == nil {
				_, err = store.DataKeyAddWrap(ctx, j.dk.ID, id, wrapped)
			}
			if err != nil {
				failed[id] = true
				d.cfg.Logger.Warn("data key not wrapped by a KEK yet; retrying at the next reload",
					slog.String("data_key_id", j.dk.ID), slog.String("kek_id", id), slog.String("error", err.Error()))
				continue
			}
			added = true
			d.cfg.Logger.Info("data key wrapped by another KEK", slog.String("data_key_id", j.dk.ID), slog.String("kek_id", id))
		}
	}()
}

// WaitDataKeyWraps waits for the wraps a load added in the background
// (tests, and shutdown).
func (k *Keyring) WaitDataKeyWraps() {
	if k.dataKeys != nil {
		k.dataKeys.addWG.Wait()
	}
}
