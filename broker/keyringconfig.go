package broker

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/keybroker/keybroker/kek"
)

// What a keyring in cached envelope mode is configured with, and the data key rows it keeps.

// DataKey is a data key as stored: wrapped by the remote KEK WrappedBy.
type DataKey struct {
	ID        string // recorded as kek_id on the rows it wraps
	WrappedBy string // id of the remote KEK that wraps it
	Wrapped   []byte
	// Wraps are its other wraps, by other remote KEKs (KeyringConfig.Also):
	// any one of them opens it too.
	Wraps []DataKeyWrap
	// CreatedAt is the minter's clock, which the store moves later when
	// it is not after every other data key's.
	CreatedAt time.Time
}

// DataKeyBinding is what the remote KEK's wrap of data key id is bound
// to: a data key's wrap does not open as another data key, nor as a user
// key.
func DataKeyBinding(id, wrappedBy string) map[string]string {
	return map[string]string{kek.BindingPurpose: "keybroker-data-key", kek.BindingDataKeyID: id, kek.BindingKEKID: wrappedBy}
}

// ErrNotCachedMode means the active KEK is not in cached envelope mode:
// there is no data key to rotate.
var ErrNotCachedMode = errors.New("the active KEK is not in cached envelope mode")

// KeyringConfig configures LoadKeyring.
type KeyringConfig struct {
	// Active makes new wraps (through a data key when it is cached).
	Active KEK
	// Also are more remote KEKs in cached envelope mode that wrap every
	// data key beside Active, in order of preference: any one of them
	// opens a data key (datakeywraps.go). DataKeys must then be a
	// DataKeyWrapStore.
	Also []KEK
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
	// with Cached. Injected because broker imports no provider. When the
	// KEK it returns is a kek.Destroyer, the keyring destroys it once the
	// data key is no longer loaded.
	NewLocalKEK func(id string, key []byte) (KEK, error)
	// OnKEKCall, when set, is told of every call the keyring makes to a
	// KEK — the data keys' local KEKs and the remote KEKs that wrap them
	// included — and of those the re-wrap job makes through it (Rewrap,
	// LatestVersion), with its duration and error: the KEK metrics. It
	// must be quick and safe for concurrent use. Others that call a KEK
	// of the keyring report through Keyring.CallObserver.
	OnKEKCall func(kek.Call)
	// RefreshMinInterval rate-limits reloads triggered by an unknown id;
	// default 10s.
	RefreshMinInterval time.Duration
	// DataKeyMaxAge, when positive, makes a load that finds the newest
	// data key this old or older mint a new one: the data key rotates by
	// itself. Zero rotates it only on demand (RotateDataKey).
	DataKeyMaxAge time.Duration
	// Hold, when set, is the id of a configured KEK that new wraps, new
	// data keys and data-key moves use instead of Active, until the
	// runtime's rollout releases it (rollout.go): the first decision of
	// the one-step rollout, taken before the first load.
	Hold string
	// Now is the clock DataKeyMaxAge is measured with; default time.Now.
	Now    func() time.Time
	Logger *slog.Logger
	// ReadOnly loads what is stored and writes nothing to the data keys:
	// no first data key, no move under a new remote KEK, no new one for
	// age, no wraps added under Also. For the commands that only look
	// (config check, audit verify, audit upkeep's mark): a keyring of a fresh
	// install in cached mode then wraps nothing until serve makes the
	// first data key.
	ReadOnly bool
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
	if len(c.Also) > 0 {
		if _, ok := c.DataKeys.(DataKeyWrapStore); !ok {
			return errors.New("broker: KeyringConfig.Also needs a DataKeys store that keeps several wraps (DataKeyWrapStore)")
		}
		for _, k := range append([]KEK{c.Active}, c.Also...) {
			if !slices.Contains(c.Cached, k.ID()) {
				return fmt.Errorf("broker: KEK %q wraps data keys beside others but is not in cached envelope mode", k.ID())
			}
		}
	}
	if c.RefreshMinInterval == 0 {
		c.RefreshMinInterval = 10 * time.Second
	}
	if c.DataKeyMaxAge < 0 {
		return errors.New("broker: KeyringConfig.DataKeyMaxAge must not be negative")
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}
