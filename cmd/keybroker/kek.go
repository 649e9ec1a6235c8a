package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/cmd/keybroker/internal/config"
	"github.com/keybroker/keybroker/kek"
	"github.com/keybroker/keybroker/kekproviders"
	"github.com/keybroker/keybroker/kekproviders/localkek"
)

// kekUsage introduces the kek commands.
const kekUsage = `status, check and rotate-data-key read serve's store and KEK settings
($DATABASE_URL, $KEYBROKER_KEK, $KEYBROKER_KEK_RETIRED, …); "keybroker kek
COMMAND -h" lists their flags. Run them where serve's KEK is: beside
"make run" with --dev; in the Compose service (docker compose run --rm
keybroker kek check); in the pod (kubectl exec deploy/keybroker --
/usr/local/bin/keybroker kek check); on a systemd host with the unit's
credential and settings (deploy/README.md, "Operator commands"):
  sudo systemd-run --pipe --wait --collect --quiet -p DynamicUser=yes -p User=keybroker \
    -p LoadCredential=keybroker-kek:/etc/keybroker/kek -p EnvironmentFile=/etc/keybroker/keybroker.env \
    /usr/local/bin/keybroker kek check
`

// cmdKEKGenerate is "keybroker kek generate".
func cmdKEKGenerate(stdout io.Writer) error {
	key := make([]byte, localkek.KeySize)
	rand.Read(key)
	defer clear(key)
	fmt.Fprintln(stdout, base64.StdEncoding.EncodeToString(key))
	return nil
}

const kekStatusUsage = `Usage: keybroker kek status [flags]

Rows per KEK id and wrap format, each with its share, marked with its
role in the configured keyring when a KEK is configured (only the URIs'
ids are read: no KEK is opened); how many rows are left in format 1 (the
original service's unbound wraps) and whether format 1 is closed, since
when and by whom; in cached envelope mode the data keys, each with the KEK
that wraps it, when it was made and the rows under it, the newest marked;
and the re-wrap job: whether a runner works now, its progress and rate;
on PostgreSQL the live replicas' announcements (which KEKs each holds, wraps
with and is configured to wrap with) and whom the rollout of a newly
configured KEK waits for. A
KEK can be removed from the configuration once it has 0 rows. The re-wrap
job upgrades format-1 rows first and closes format 1 for good once none is
left.

Flags:
`

// cmdKEKStatus is `keybroker kek status`.
func cmdKEKStatus(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cfg, err := config.Resolve(config.KEKStatus, args, getenv, stderr, kekStatusUsage)
	if err != nil {
		return err
	}
	log := newLogger(cfg.Log, stderr)
	store, closeStore, err := openToolStore(ctx, cfg, log, stderr)
	if err != nil {
		return err
	}
	defer closeStore()
	rows, err := store.KEKCounts(ctx)
	if err != nil {
		return err
	}
	var state *broker.RewrapState
	if locker, ok := store.(broker.RewrapLocker); ok {
		if state, err = locker.RewrapState(ctx); err != nil {
			return err
		}
	}
	var format1 *broker.Format1State
	// A schema not migrated to the closure yet still has counts.
	if st, err := store.Format1State(ctx); err != nil {
		log.Warn("cannot read whether format 1 is closed", slog.String("error", err.Error()))
	} else {
		format1 = &st
	}
	roles := map[string]string{}
	for id, role := range cfg.KEKs.Roles() {
		roles[id] = string(role)
	}
	dataKeys, err := store.DataKeyList(ctx)
	if err != nil {
		return err
	}
	if len(roles) > 0 {
		// Rows of cached envelope mode name a data key: say which KEK
		// wraps it, so the operator sees what still needs an old KEK.
		for _, dk := range dataKeys {
			roles[dk.ID] = dataKeyRole(dk, roles)
		}
	}
	now := time.Now()
	printKEKStatus(stdout, rows, roles, state, format1, now)
	printDataKeys(stdout, dataKeys, rows, now)
	active := ""
	if cfg.KEKs.Active != nil {
		active = cfg.KEKs.Active.ID
	}
	printReplicas(ctx, stdout, store, active, cfg.Rollout.Replicas)
	printKEKDataKeys(ctx, stdout, cfg.KEKs, dataKeys, getenv, log)
	return nil
}

// printDataKeys lists the data keys of cached envelope mode, oldest first,
// with the rows under each; nothing when there are none.
func printDataKeys(w io.Writer, dataKeys []broker.DataKey, rows []broker.KEKCount, now time.Time) {
	if len(dataKeys) == 0 {
		return
	}
	under := map[string]int64{}
	for _, c := range rows {
		if c.Wrapped {
			under[c.KEKID] += c.Rows
		}
	}
	newest := dataKeys[len(dataKeys)-1]
	fmt.Fprintln(w, "data keys (cached envelope mode), oldest first:")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  data key\twrapped by\tcreated\tage\trows\t")
	for _, dk := range dataKeys {
		var note string
		switch {
		case dk.ID == newest.ID:
			note = "newest: new wraps use it"
		case under[dk.ID] > 0:
			note = "older: the re-wrap job moves its rows to the newest"
		default:
			note = fmt.Sprintf("older, no row needs it: the re-wrap job deletes it once %s is %s old", newest.ID, formatAge(broker.DefaultDataKeyGrace))
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\n", dk.ID, wrapList(dk), dk.CreatedAt.Local().Format(time.DateTime),
			formatAge(now.Sub(dk.CreatedAt)), formatCount(under[dk.ID]), note)
	}
	tw.Flush()
}

// formatAge writes a data key's age in days, or hours and minutes under a
// day.
func formatAge(d time.Duration) string {
	switch {
	case d < 0:
		return "0m"
	case d >= 24*time.Hour:
		return fmt.Sprintf("%dd", int(d/(24*time.Hour)))
	case d >= time.Hour:
		return fmt.Sprintf("%dh%dm", int(d/time.Hour), int(d%time.Hour/time.Minute))
	default:
		return fmt.Sprintf("%dm", int(d/time.Minute))
	}
}

const kekRotateDataKeyUsage = `Usage: keybroker kek rotate-data-key [flags]

Cached envelope mode (a remote KEK, the default for awskms://, gcpkms://
and vault-transit:// URIs): mints a new data key under the active KEK,
stores it as the newest and prints its id on stdout. New wraps use it at
once in servers whose re-wrap job runs next ($KEYBROKER_REWRAP_INTERVAL)
and in every server at its next data-key reload (within 5 minutes). The
re-wrap job then moves every row to it, and deletes the older data keys
once no row needs them and the new one is 15 minutes old; each server
zeroes a deleted key in its memory at its next reload. "keybroker kek
status" shows the data keys and the rows under each.

Rotate the data key after a suspected exposure of a server's memory (a
core dump, a leaked heap snapshot): data keys are kept in memory, and
rotating or revoking the KMS key alone only re-wraps the same data keys.
Servers also rotate it by themselves past $KEYBROKER_DATA_KEY_MAX_AGE.
docs/rotation.md has the runbook.

Flags:
`

// cmdKEKRotateDataKey is `keybroker kek rotate-data-key`.
func cmdKEKRotateDataKey(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cfg, err := config.Resolve(config.KEKRotateDataKey, args, getenv, stderr, kekRotateDataKeyUsage)
	if err != nil {
		return err
	}
	log := newLogger(cfg.Log, stderr)
	if active := cfg.KEKs.Active; !active.Cached {
		return fmt.Errorf("the active KEK %s is not in cached envelope mode (a local KEK, or a URI with cache=off): it has no data key; rotate the KEK itself (docs/rotation.md)", active.ID)
	}
	keks, store, closeAll, err := openKEKsAndStore(ctx, cfg, getenv, log, stderr)
	if err != nil {
		return err
	}
	defer closeAll()
	keyring, err := keks.keyring(ctx, store, log, 0, time.Now)
	if err != nil {
		return err
	}
	if err := keyring.Ready(); err != nil {
		return fmt.Errorf("the data keys do not load, so no new one is made: %w", err)
	}
	previous := keyring.ActiveID()
	id, minted, err := keyring.RotateDataKey(ctx)
	if err != nil {
		return fmt.Errorf("rotate the data key: %w", err)
	}
	fmt.Fprintln(stdout, id)
	if !minted {
		fmt.Fprintf(stderr, "another keybroker minted data key %s at the same moment: it is the newest, and no second one was made\n", id)
	}
	fmt.Fprintf(stderr, "new wraps use data key %s (wrapped by %s) instead of %s: in every server within %s.\n"+
		"The re-wrap job then moves the rows to it and deletes %s once no row needs it; \"keybroker kek status\" shows the rows under each.\n",
		id, wrappingIDs(cfg.KEKs), previous, formatAge(broker.KeyringRefreshInterval), previous)
	return nil
}

func printKEKStatus(w io.Writer, rows []broker.KEKCount, roles map[string]string, state *broker.RewrapState, format1 *broker.Format1State, now time.Time) {
	var wrapped, zk, legacy int64
	for _, c := range rows {
		if c.Wrapped {
			wrapped += c.Rows
		} else {
			zk += c.Rows
		}
		if c.Wrapped && c.FormatVersion == broker.FormatLegacy {
			legacy += c.Rows
		}
	}
	share := func(n, of int64) string {
		if of == 0 {
			return "-"
		}
		return fmt.Sprintf("%.1f%%", 100*float64(n)/float64(of))
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "KEK id\tformat\trows\tshare\t\t")
	seen := map[string]bool{}
	for _, c := range rows {
		if !c.Wrapped {
			continue
		}
		seen[c.KEKID] = true
		role := roles[c.KEKID]
		switch {
		case len(roles) > 0 && role == "":
			role = "NOT CONFIGURED: these rows do not open"
		case role == "active" && c.FormatVersion == broker.FormatLegacy:
			role = "active (legacy format: the job upgrades it)"
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t\n", c.KEKID, c.FormatVersion, formatCount(c.Rows), share(c.Rows, wrapped), role)
	}
	// Configured KEKs without rows: an old one can go.
	ids := make([]string, 0, len(roles))
	for id := range roles {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		note := roles[id]
		if seen[id] || (note != "active" && note != "decrypt-only") {
			continue // a data key without rows is not configuration
		}
		if note == "decrypt-only" {
			note += ": no rows left, it can be removed"
		}
		fmt.Fprintf(tw, "%s\t-\t0\t%s\t%s\t\n", id, share(0, wrapped), note)
	}
	tw.Flush()
	fmt.Fprintf(w, "%s rows with a server wrap; %s zero-knowledge rows (%s of all: no server wrap, nothing to move)\n",
		formatCount(wrapped), formatCount(zk), share(zk, wrapped+zk))
	printFormat1(w, legacy, format1)

	switch {
	case state == nil:
		// The embedded store (one node) runs the job — in serve's
		// background and as `keybroker rewrap` — without a runner lock,
		// and so without a progress record to show here.
		fmt.Fprintln(w, "re-wrap job: runs in serve's background and with \"keybroker rewrap\"; the embedded store records no progress: the rows above are what is left")
	case state.Runner == "":
		fmt.Fprintln(w, "re-wrap job: never ran")
	case state.Running:
		fmt.Fprintf(w, "re-wrap job: RUNNING on %s since %s, to %s: %s/%s rows, %s skipped, %s failed, %.0f rows/s",
			state.Runner, state.StartedAt.Local().Format(time.DateTime), state.ActiveKEKID,
			formatCount(state.Processed()), formatCount(state.Total), formatCount(state.Skipped), formatCount(state.Failed), state.RowsPerSecond)
		if eta := state.ETA(); eta > 0 {
			fmt.Fprintf(w, ", ETA %s", eta.Round(time.Second))
		}
		fmt.Fprintf(w, " (reported %s ago)\n", now.Sub(state.UpdatedAt).Round(time.Second))
	default:
		outcome := "finished"
		if !state.Finished {
			outcome = "stopped early"
			if state.Error != "" {
				outcome += " (" + state.Error + ")"
			}
		}
		fmt.Fprintf(w, "re-wrap job: not running; the last run, by %s, %s at %s: %s rows moved to %s, %s skipped, %s failed, %.0f rows/s\n",
			state.Runner, outcome, state.UpdatedAt.Local().Format(time.DateTime), formatCount(state.Done), state.ActiveKEKID,
			formatCount(state.Skipped), formatCount(state.Failed), state.RowsPerSecond)
	}
}

const kekCheckUsage = `Usage: keybroker kek check [flags]

For each configured KEK (the active one and every decrypt-only one): the
provider's status where it has one (DescribeKey, GetCryptoKey, the
transit key) and a wrap+unwrap round trip of random bytes, with the
latency of each. Exits 1 when any KEK fails.

Flags:
`

// cmdKEKCheck is `keybroker kek check`.
func cmdKEKCheck(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cfg, err := config.Resolve(config.KEKCheck, args, getenv, stderr, kekCheckUsage)
	if err != nil {
		return err
	}
	opener := kekproviders.Opener{AllowDevKeys: cfg.KEKs.AllowDevKeys, Getenv: getenv}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "KEK id\trole\tresult\tstatus\twrap\tunwrap\tdetail")
	specs := cfg.KEKs.All()
	failed := 0
	var explained []string // what does not fit on a line of the table
	for _, spec := range specs {
		res, err := checkOne(ctx, opener, spec, cfg.Tool.Timeout)
		if err != nil {
			failed++
			first, rest, more := strings.Cut(err.Error(), "\n")
			fmt.Fprintf(tw, "%s\t%s\tFAILED\t-\t-\t-\topen: %s\n", spec.ID, spec.Role, first)
			if more {
				explained = append(explained, rest)
			}
			continue
		}
		class, detail := res.Class(), ""
		if !res.OK() {
			failed++
			class = "FAILED (" + class + ")"
			detail = res.Err().Error()
		}
		status := "-"
		if res.StatusChecked {
			status = latency(res.StatusLatency)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", res.ID, spec.Role, class, status,
			latency(res.WrapLatency), latency(res.UnwrapLatency), detail)
	}
	tw.Flush()
	for _, text := range explained {
		fmt.Fprintln(stdout, text)
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d KEKs failed the check", failed, len(specs))
	}
	return nil
}

// checkOne opens one KEK and probes it, both within timeout.
func checkOne(ctx context.Context, opener kekproviders.Opener, spec config.KEKSpec, timeout time.Duration) (kek.CheckResult, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	k, err := openKEK(ctx, opener, spec)
	if err != nil {
		return kek.CheckResult{}, err
	}
	if c, ok := k.(io.Closer); ok {
		defer c.Close()
	}
	return kek.Check(ctx, k, nil), nil
}

func latency(d time.Duration) string {
	if d == 0 {
		return "-"
	}
	return d.Round(time.Microsecond).String()
}

// printFormat1 is the status line of format 1: how many rows with a
// format-1 server wrap are left and whether format 1 is closed.
func printFormat1(w io.Writer, left int64, st *broker.Format1State) {
	switch {
	case st == nil && left == 0:
	case st == nil:
		fmt.Fprintf(w, "format 1: %s rows left; the re-wrap job upgrades them (whether format 1 is closed is not known)\n", formatCount(left))
	case !st.Closed && left > 0:
		fmt.Fprintf(w, "format 1: OPEN, %s rows left; the re-wrap job upgrades them first, then closes format 1 for good\n", formatCount(left))
	case !st.Closed:
		fmt.Fprintln(w, "format 1: open, 0 rows left; the re-wrap job closes it for good at its next run")
	default:
		fmt.Fprintf(w, "format 1: closed since %s by %s: a format-1 wrap no longer opens",
			st.ClosedAt.Local().Format(time.DateTime), st.ClosedBy)
		if left > 0 {
			fmt.Fprintf(w, "; %s rows in format 1 written since do NOT open (see docs/rotation.md)", formatCount(left))
		}
		fmt.Fprintln(w)
	}
}
