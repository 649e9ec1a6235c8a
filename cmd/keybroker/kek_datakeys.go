package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/cmd/keybroker/internal/config"
)

// kekProbeTimeout bounds what "kek status" asks each KEK.
const kekProbeTimeout = 10 * time.Second

// wrapList names the KEKs that wrap dk, its first wrap first.
func wrapList(dk broker.DataKey) string {
	var ids []string
	for _, w := range dk.AllWraps() {
		ids = append(ids, w.KEKID)
	}
	return strings.Join(ids, ", ")
}

// dataKeyRole is what kek status says of the rows under dk: the KEKs that
// wrap it, and whether any of them is configured.
func dataKeyRole(dk broker.DataKey, roles map[string]string) string {
	role := "data key wrapped by " + wrapList(dk)
	for _, w := range dk.AllWraps() {
		if roles[w.KEKID] != "" {
			return role
		}
	}
	return role + " (NOT CONFIGURED: these rows do not open)"
}

// printKEKDataKeys asks each configured KEK in cached envelope mode, at
// once, to open the data keys it wraps, and prints its state: how many it
// opens of how many it wraps, and the data keys it alone wraps (it cannot
// be removed from the configuration while there are any).
func printKEKDataKeys(ctx context.Context, w io.Writer, keks config.KEKs, dataKeys []broker.DataKey, getenv func(string) string, log *slog.Logger) {
	var specs []config.KEKSpec
	for _, spec := range keks.All() {
		if spec.Cached {
			specs = append(specs, spec)
		}
	}
	if len(specs) == 0 || len(dataKeys) == 0 {
		return
	}
	type line struct {
		wraps, opened int
		state         string
		only          []string
	}
	lines := make([]line, len(specs))
	opened, err := openKEKs(ctx, keks, getenv, log)
	if err != nil {
		fmt.Fprintf(w, "KEKs of the data keys: not probed, the KEKs do not open here: %v\n", err)
		return
	}
	defer opened.close()
	byID := map[string]broker.KEK{}
	for _, k := range opened.keks {
		byID[k.ID()] = k
	}
	configured := func(id string) bool { return byID[id] != nil }
	var wg sync.WaitGroup
	for i, spec := range specs {
		for _, dk := range dataKeys {
			others := false
			mine := false
			for _, wr := range dk.AllWraps() {
				mine = mine || wr.KEKID == spec.ID
				others = others || (wr.KEKID != spec.ID && configured(wr.KEKID))
			}
			if mine && !others {
				lines[i].only = append(lines[i].only, dk.ID)
			}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			pctx, cancel := context.WithTimeout(ctx, kekProbeTimeout)
			defer cancel()
			wraps, n, err := broker.ProbeDataKeyWraps(pctx, byID[spec.ID], dataKeys)
			lines[i].wraps, lines[i].opened = wraps, n
			switch {
			case wraps == 0:
				lines[i].state = "wraps no data key yet"
			case err == nil:
				lines[i].state = "ok"
			case broker.IsUnavailable(err):
				lines[i].state = "UNAVAILABLE: " + err.Error()
			default:
				lines[i].state = "REFUSED: " + err.Error()
			}
		}()
	}
	wg.Wait()
	fmt.Fprintln(w, "KEKs of the data keys (each asked to open the data keys it wraps):")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  KEK id\trole\topens\tstate\t")
	for i, spec := range specs {
		l := lines[i]
		note := ""
		if len(l.only) > 0 {
			note = "  the only configured wrap of " + strings.Join(l.only, ", ") + ": keep it configured until another KEK wraps them"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%d of %d data keys (wraps %d)\t%s\t%s\n", spec.ID, spec.Role, l.opened, len(dataKeys), l.wraps, l.state, note)
	}
	tw.Flush()
}

// wrappingIDs names the KEKs that wrap every new data key: the active one
// and the others of its list.
func wrappingIDs(keks config.KEKs) string {
	ids := []string{keks.Active.ID}
	for _, spec := range keks.Also {
		ids = append(ids, spec.ID)
	}
	return strings.Join(ids, ", ")
}
