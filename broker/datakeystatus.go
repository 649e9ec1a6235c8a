package broker

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
)

// What each KEK of several does for the data keys: the outcomes that
// /readyz and "kek status" show, the readiness probe of a KEK of a list,
// and the check that refuses to drop the only KEK that wraps a data key
// rows need (datakeywraps.go has the wrapping and the opening).

// kekOutcome is what a KEK did with the data keys at its last tries.
type kekOutcome struct {
	opened  map[string]bool // data keys it opened at its last try of each
	lastErr error           // its last unwrap's error
	at      time.Time
}

func (d *dataKeySource) record(kekID, dataKeyID string, err error) {
	d.statsMu.Lock()
	defer d.statsMu.Unlock()
	if d.stats == nil {
		d.stats = map[string]*kekOutcome{}
	}
	o := d.stats[kekID]
	if o == nil {
		o = &kekOutcome{opened: map[string]bool{}}
		d.stats[kekID] = o
	}
	o.opened[dataKeyID] = err == nil
	o.lastErr, o.at = err, time.Now()
}

// noteList keeps the stored data keys for KEKDataKeys, and forgets the
// outcomes of data keys that are gone.
func (d *dataKeySource) noteList(list []DataKey) {
	d.statsMu.Lock()
	defer d.statsMu.Unlock()
	d.list = list
	ids := map[string]bool{}
	for _, dk := range list {
		ids[dk.ID] = true
	}
	for _, o := range d.stats {
		maps.DeleteFunc(o.opened, func(id string, _ bool) bool { return !ids[id] })
	}
}

// KEKDataKeys is what one remote KEK in cached envelope mode does for the
// data keys: /readyz and "kek status" show one per configured KEK.
type KEKDataKeys struct {
	KEKID string
	// Wrapping: the KEK wraps every data key (the active one or one of
	// Also); otherwise it is decrypt-only.
	Wrapping bool
	// Wraps is how many stored data keys it wraps; Opened how many it
	// opened when last asked (it is asked only for those it wraps).
	Wraps, Opened int
	// Total is how many data keys are stored.
	Total int
	// Err is its last unwrap's error, nil when that worked or it was not
	// asked yet.
	Err error
	// Only lists the data keys no other configured KEK wraps.
	Only []string
}

// DataKeyKEKs reports, for each configured KEK in cached envelope mode
// (the wrapping ones first, in order), how many data keys it wraps and
// opened at its last try. It is nil outside cached envelope mode.
func (k *Keyring) DataKeyKEKs() []KEKDataKeys {
	d := k.dataKeys
	if d == nil || len(d.cached) == 0 {
		return nil
	}
	d.statsMu.Lock()
	defer d.statsMu.Unlock()
	var out []KEKDataKeys
	for _, kek := range k.configured {
		id := kek.ID()
		if !d.cached[id] {
			continue
		}
		row := KEKDataKeys{KEKID: id, Wrapping: d.preference(id) <= len(d.cfg.Also), Total: len(d.list)}
		for i := range d.list {
			dk := &d.list[i]
			if !dk.wrappedBy(id) {
				continue
			}
			row.Wraps++
			if o := d.stats[id]; o != nil && o.opened[dk.ID] {
				row.Opened++
			}
			only := true
			for _, w := range dk.AllWraps() {
				if w.KEKID != id && d.remotes[w.KEKID] != nil {
					only = false
				}
			}
			if only {
				row.Only = append(row.Only, dk.ID)
			}
		}
		if o := d.stats[id]; o != nil {
			row.Err = o.lastErr
		}
		out = append(out, row)
	}
	return out
}

// DataKeyKEK is DataKeyKEKs' entry for one KEK id.
func (k *Keyring) DataKeyKEK(id string) (KEKDataKeys, bool) {
	for _, row := range k.DataKeyKEKs() {
		if row.KEKID == id {
			return row, true
		}
	}
	return KEKDataKeys{}, false
}

// DataKeyWrapError refuses a configuration that leaves data keys rows
// need with no configured KEK to open them: a KEK was removed from the
// list while it was the only wrap of a data key.
type DataKeyWrapError struct {
	// DataKeys maps each such data key to the KEKs that wrap it.
	DataKeys map[string][]string
	// Rows maps each such data key to the rows it wraps.
	Rows map[string]int64
}

func (e *DataKeyWrapError) Error() string {
	need := map[string]bool{}
	var parts []string
	for _, id := range slices.Sorted(maps.Keys(e.DataKeys)) {
		parts = append(parts, fmt.Sprintf("%s (%d rows) is wrapped only by %s", id, e.Rows[id], strings.Join(quoteAll(e.DataKeys[id]), ", ")))
		for _, k := range e.DataKeys[id] {
			need[k] = true
		}
	}
	return fmt.Sprintf("data keys would open with no configured KEK: %s. Keep %s configured (as decrypt-only in $KEYBROKER_KEK_RETIRED at least) "+
		"until another KEK wraps them: a KEK listed in $KEYBROKER_KEK wraps every data key once it answers; \"keybroker kek status\" shows which data keys each KEK opens",
		strings.Join(parts, "; "), strings.Join(quoteAll(slices.Sorted(maps.Keys(need))), " or "))
}

func quoteAll(ids []string) []string {
	out := make([]string, len(ids))
	for i, id := range ids {
		out[i] = fmt.Sprintf("%q", id)
	}
	return out
}

// CheckDataKeyWraps returns a *DataKeyWrapError when rows name a data key
// that no configured KEK wraps. It reads only the store (the wraps' KEK
// ids), so it also holds while a KMS is down.
func CheckDataKeyWraps(ctx context.Context, store RewrapStore, k *Keyring) error {
	d := k.dataKeys
	if d == nil {
		return nil
	}
	list, err := d.cfg.DataKeys.DataKeyList(ctx)
	if err != nil {
		return fmt.Errorf("data keys: %w", err)
	}
	orphans := map[string][]string{}
	for i := range list {
		dk := &list[i]
		var by []string
		covered := false
		for _, w := range dk.AllWraps() {
			by = append(by, w.KEKID)
			covered = covered || d.remotes[w.KEKID] != nil
		}
		if !covered {
			orphans[dk.ID] = by
		}
	}
	if len(orphans) == 0 {
		return nil
	}
	counts, err := store.KEKCounts(ctx)
	if err != nil {
		return err
	}
	e := &DataKeyWrapError{DataKeys: map[string][]string{}, Rows: map[string]int64{}}
	for _, c := range counts {
		if by, ok := orphans[c.KEKID]; ok && c.Wrapped && c.Rows > 0 {
			e.DataKeys[c.KEKID] = by
			e.Rows[c.KEKID] += c.Rows
		}
	}
	if len(e.DataKeys) == 0 {
		return nil
	}
	return e
}

// ProbeDataKeyWraps unwraps, with remote, every data key of list it
// wraps, and returns how many it wraps and how many opened, with the
// first error; the plaintexts are wiped at once. It is what "kek status"
// asks each KEK.
func ProbeDataKeyWraps(ctx context.Context, remote KEK, list []DataKey) (wraps, opened int, err error) {
	for i := range list {
		dk := &list[i]
		for _, w := range dk.AllWraps() {
			if w.KEKID != remote.ID() {
				continue
			}
			wraps++
			key, uerr := remote.Unwrap(ctx, w.Wrapped, DataKeyBinding(dk.ID, w.KEKID))
			if uerr != nil {
				if err == nil {
					err = classifyKEKError(ErrUnwrapFailed, uerr)
				}
				continue
			}
			wipe(key)
			opened++
		}
	}
	return wraps, opened, err
}

// wrapsWithSeveral reports whether several KEKs wrap every data key.
func (k *Keyring) wrapsWithSeveral() bool {
	return k.dataKeys != nil && len(k.dataKeys.cfg.Also) > 0
}

// DegradedError is a readiness probe's answer for a dependency the server
// serves without: /readyz shows it as degraded, and stays ready.
type DegradedError struct{ Err error }

func (e *DegradedError) Error() string { return "serving without it: " + e.Err.Error() }

// Unwrap returns the dependency's error.
func (e *DegradedError) Unwrap() error { return e.Err }

// Degraded is always true.
func (e *DegradedError) Degraded() bool { return true }

// severalKEKsProbe is the readiness probe of a KEK when several wrap
// every data key. While the data keys are loaded, the KEK failing — down,
// or refusing (a revoked key: any other KEK still opens the data keys) —
// leaves the server ready, and shows as degraded with how many data keys
// it opens; until they load it fails as for any KEK.
func severalKEKsProbe(status func(context.Context) error, keyring *Keyring) func(context.Context) error {
	return func(ctx context.Context) error {
		err := status(ctx)
		if err == nil || keyring.Ready() != nil {
			return err
		}
		return &DegradedError{Err: err}
	}
}
