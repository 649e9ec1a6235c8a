package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/cmd/keybroker/internal/config"
	"github.com/keybroker/keybroker/kekproviders"
	"github.com/keybroker/keybroker/kekproviders/file"
	"github.com/keybroker/keybroker/kekproviders/localkek"
	"github.com/keybroker/keybroker/kekproviders/systemd"
)

// openedKEKs are the configured KEKs, opened.
type openedKEKs struct {
	specs   []config.KEKSpec  // the active one first, then the others of its list
	also    int               // how many others its list has (config.KEKs.Also)
	keks    []broker.KEK      // specs', opened
	schemes map[string]string // each id's URI scheme: its provider in the metrics
	metrics *kekMetrics       // set by serve: the keyring measures every KEK call
	// rollout is serve's rollout settings (kek_replicas.go); nil for the
	// operator commands.
	rollout *config.Rollout
}

// active is the KEK that makes new wraps.
func (o *openedKEKs) active() broker.KEK { return o.keks[0] }

// close closes KEKs that hold resources (connections, token renewers).
func (o *openedKEKs) close() {
	for _, k := range o.keks {
		if c, ok := k.(io.Closer); ok {
			_ = c.Close()
		}
	}
}

// openKEKs opens the active and decrypt-only KEKs. A missing, malformed
// or all-zero KEK stops the start unless --dev.
func openKEKs(ctx context.Context, cfg config.KEKs, getenv func(string) string, log *slog.Logger) (*openedKEKs, error) {
	if cfg.Active == nil {
		return nil, config.ErrNoKEK
	}
	opener := kekproviders.Opener{AllowDevKeys: cfg.AllowDevKeys, Getenv: getenv}
	o := &openedKEKs{schemes: map[string]string{}, also: len(cfg.Also)}
	for _, spec := range cfg.All() {
		kek, err := openKEK(ctx, opener, spec)
		if err != nil {
			o.close()
			return nil, err
		}
		if cfg.AllowDevKeys && !spec.Dev {
			log.Warn("DEV MODE: insecure KEKs (the all-zero key) are accepted")
		}
		o.specs, o.keks = append(o.specs, spec), append(o.keks, kek)
		o.schemes[spec.ID] = spec.Scheme
	}
	return o, nil
}

// openKEK opens one KEK, and says what to do when it does not open.
func openKEK(ctx context.Context, opener kekproviders.Opener, spec config.KEKSpec) (broker.KEK, error) {
	kek, err := opener.Open(ctx, spec.URI)
	var modeErr *file.ModeError
	switch {
	case err == nil:
		return kek, nil
	case spec.Dev && errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("dev KEK: %w; \"keybroker serve --dev\" makes it", err)
	case spec.Dev && (errors.As(err, &modeErr) || errors.Is(err, fs.ErrPermission)):
		return nil, fmt.Errorf("dev KEK: %w", err)
	case spec.Dev:
		return nil, fmt.Errorf("dev KEK: %w; restore it from a backup, or remove it to start over (keys it wrapped will not open)", err)
	case spec.Scheme == kekproviders.SchemeSystemd && getenvOf(opener)(systemd.DirectoryVariable) == "":
		// An operator command run from a shell, outside the unit that
		// holds the credential.
		return nil, fmt.Errorf("%s KEK, %s: %w.\n  Outside the unit, run the command with the unit's credential and settings, e.g.:\n"+
			"    sudo systemd-run --pipe --wait --collect -p DynamicUser=yes -p User=keybroker \\\n"+
			"      -p LoadCredential=%s:/etc/keybroker/kek -p EnvironmentFile=/etc/keybroker/keybroker.env \\\n"+
			"      /usr/local/bin/keybroker kek check\n"+
			"  (LoadCredentialEncrypted= for an encrypted credential; deploy/README.md, \"Operator commands\")",
			spec.Role, spec.Setting, err, systemdCredentialName(spec.URI))
	case errors.Is(err, localkek.ErrDevKey):
		return nil, fmt.Errorf("%s KEK, %s: %w.\n  Generate a real one with: keybroker kek generate\n  (or pass --dev for a throwaway local run)", spec.Role, spec.Setting, err)
	default:
		return nil, fmt.Errorf("%s KEK, %s: %w", spec.Role, spec.Setting, err)
	}
}

// getenvOf is the opener's environment.
func getenvOf(o kekproviders.Opener) func(string) string {
	if o.Getenv == nil {
		return os.Getenv
	}
	return o.Getenv
}

// systemdCredentialName is the credential a systemd-credential:// URI
// names.
func systemdCredentialName(uri string) string {
	p, err := kekproviders.ParseURI(uri)
	if err != nil {
		return "NAME"
	}
	return strings.TrimPrefix(p.URL.Host+p.URL.Path, "/")
}

// keyring builds the keyring over the store's data keys; the configured
// remote KEKs are in cached envelope mode unless their URI says
// cache=off. serve passes a maximum data-key age; the operator commands
// pass 0 and never rotate by age.
func (o *openedKEKs) keyring(ctx context.Context, store broker.Store, log *slog.Logger, dataKeyMaxAge time.Duration, now func() time.Time) (*broker.Keyring, error) {
	return o.loadKeyring(ctx, store, log, dataKeyMaxAge, now, false)
}

// lookingKeyring is the keyring of a command that needs the keys only to
// look (config check, audit verify, the audit key of audit upkeep's
// retention mark): it loads the data keys and writes none — no first data
// key, no move, no wrap added (broker.KeyringConfig.ReadOnly).
func (o *openedKEKs) lookingKeyring(ctx context.Context, store broker.Store, log *slog.Logger) (*broker.Keyring, error) {
	return o.loadKeyring(ctx, store, log, 0, time.Now, true)
}

func (o *openedKEKs) loadKeyring(ctx context.Context, store broker.Store, log *slog.Logger, dataKeyMaxAge time.Duration, now func() time.Time, readOnly bool) (*broker.Keyring, error) {
	newLocal := func(id string, key []byte) (broker.KEK, error) {
		local, err := localkek.New(id, key, false)
		if err != nil {
			return nil, err
		}
		return local, nil
	}
	var cached []string
	for _, spec := range o.specs {
		if spec.Cached {
			cached = append(cached, spec.ID)
		}
	}
	kcfg := broker.KeyringConfig{Active: o.active(), Also: o.keks[1 : 1+o.also], DecryptOnly: o.keks[1+o.also:], Cached: cached, Logger: log, NewLocalKEK: newLocal,
		DataKeys: store, DataKeyMaxAge: dataKeyMaxAge, Now: now, Hold: o.rolloutHold(ctx, store, log), ReadOnly: readOnly}
	if o.metrics != nil {
		kcfg.OnKEKCall = o.observeKEKCall
	}
	// Data keys are loaded even when no KEK is cached, so rows written in
	// cached mode keep opening after a URI switches to cache=off.
	return broker.LoadKeyring(ctx, kcfg)
}
