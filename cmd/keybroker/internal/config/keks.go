package config

import (
	"errors"
	"fmt"
	"net/url"

	"github.com/keybroker/keybroker/kekproviders"
)

// KEKs are the configured KEKs, their URIs parsed once.
type KEKs struct {
	// Active makes new wraps; nil when no KEK is configured (only the
	// commands that need none run without one).
	Active *KEKSpec
	// Also are the further KEKs listed in $KEYBROKER_KEK after the first:
	// remote KEKs in cached envelope mode that wrap every data key beside
	// Active, any one of them opening it. Their role is active too.
	Also []KEKSpec
	// Retired are the decrypt-only KEKs.
	Retired []KEKSpec
	// AllowDevKeys accepts the all-zero KEK (--dev).
	AllowDevKeys bool
}

// Role is what a configured KEK does.
type Role string

// The roles of a configured KEK.
const (
	RoleActive      Role = "active"
	RoleDecryptOnly Role = "decrypt-only"
)

// KEKSpec is one configured KEK.
type KEKSpec struct {
	Role Role
	// URI is the KEK's URI with $KEYBROKER_KEK_ID applied: what the
	// provider opens. It may carry a token: never print it.
	URI    string
	ID     string
	Scheme string
	// Cached is the cached envelope mode of a remote KEK.
	Cached bool
	// Dev is the dev KEK of the data directory, which serve --dev
	// generates when it is missing.
	Dev bool
	// Setting names where it is configured, for messages:
	// "$KEYBROKER_KEK (--kek)", "$MANA_AUTH_KEK", "the dev KEK".
	Setting string
}

// All lists the active KEK, the others of its list, then the
// decrypt-only ones.
func (k KEKs) All() []KEKSpec {
	if k.Active == nil {
		return k.Retired
	}
	return append(append([]KEKSpec{*k.Active}, k.Also...), k.Retired...)
}

// MaxKEKs bounds the KEKs listed in $KEYBROKER_KEK: each data key is
// opened by asking all of them at once.
const MaxKEKs = 4

// Roles maps each configured KEK id to its role; empty without a KEK.
func (k KEKs) Roles() map[string]Role {
	roles := map[string]Role{}
	for _, spec := range k.All() {
		roles[spec.ID] = spec.Role
	}
	return roles
}

// ErrNoKEK is a command that needs a KEK, run with none configured.
var ErrNoKEK = errors.New(`no KEK configured.
  Generate one:   keybroker kek generate
  and set it:     MANA_AUTH_KEK=<that value>   (or KEYBROKER_KEK=<a KEK URI>)
  Guard it like a database password: without it no stored key can be opened.
  For a throwaway local run only, pass --dev`)

// resolveKEKs parses the KEK settings into c.KEKs. The active KEK is
// $KEYBROKER_KEK, else env://MANA_AUTH_KEK when that is set (the
// original service's variable), else with --dev the dev KEK of the data
// directory. A KEK that does not parse is left out and reported.
func (c *Config) resolveKEKs(getenv func(string) string) Problems {
	var problems Problems
	active, setting := c.raw[kekURI], kekURI.name()
	switch {
	case active == "" && getenv(EnvLegacyKEK) != "":
		active, setting = "env://"+EnvLegacyKEK, "$"+EnvLegacyKEK
	case active == "" && c.Dev:
		u := url.URL{Scheme: kekproviders.SchemeFile, Path: c.DevKEKPath(), RawQuery: "id=" + DevKEKID}
		active, setting = u.String(), "the dev KEK"
	case active == "":
		problems = append(problems, ErrNoKEK)
	}
	list := SplitList(active)
	if len(list) > 1 {
		active = list[0]
		problems = append(problems, c.resolveAlso(list[1:], setting)...)
	}
	if active != "" {
		var err error
		if id := c.raw[kekID]; id != "" && len(list) > 1 {
			err = fmt.Errorf("%s names the id of one KEK, and %d are listed: put id= in each URI", kekID.name(), len(list))
		} else if id != "" {
			active, err = withID(active, id)
		}
		if err == nil {
			c.KEKs.Active, err = parseSpec(active, RoleActive)
		}
		if err != nil {
			problems = append(problems, fmt.Errorf("%s: %w", setting, err))
		} else {
			c.KEKs.Active.Dev = setting == "the dev KEK"
			c.KEKs.Active.Setting = setting
			if len(list) > 1 && !c.KEKs.Active.Cached {
				problems = append(problems, notCachedInList(setting, *c.KEKs.Active))
			}
		}
	}
	if c.KEKs.Active != nil {
		seen := map[string]bool{}
		for _, spec := range c.KEKs.All() {
			if seen[spec.ID] {
				problems = append(problems, fmt.Errorf("%s: the KEK id %q is configured twice", setting, spec.ID))
			}
			seen[spec.ID] = true
		}
	}
	for _, uri := range SplitList(c.raw[kekRetired]) {
		spec, err := parseSpec(uri, RoleDecryptOnly)
		if err != nil {
			problems = append(problems, fmt.Errorf("%s: %w", kekRetired.name(), err))
			continue
		}
		spec.Setting = kekRetired.name()
		c.KEKs.Retired = append(c.KEKs.Retired, *spec)
	}
	return problems
}

// resolveAlso parses the KEKs listed in $KEYBROKER_KEK after the first.
func (c *Config) resolveAlso(uris []string, setting string) Problems {
	var problems Problems
	if len(uris)+1 > MaxKEKs {
		problems = append(problems, fmt.Errorf("%s lists %d KEKs: at most %d", setting, len(uris)+1, MaxKEKs))
	}
	for _, uri := range uris {
		spec, err := parseSpec(uri, RoleActive)
		if err != nil {
			problems = append(problems, fmt.Errorf("%s: %w", setting, err))
			continue
		}
		spec.Setting = setting
		if !spec.Cached {
			problems = append(problems, notCachedInList(setting, *spec))
			continue
		}
		c.KEKs.Also = append(c.KEKs.Also, *spec)
	}
	return problems
}

// notCachedInList refuses a KEK that cannot share the wrapping of the
// data keys.
func notCachedInList(setting string, spec KEKSpec) error {
	return fmt.Errorf("%s lists several KEKs, and %q is not a remote KEK in cached envelope mode: "+
		"only KMS KEKs (awskms, gcpkms, vault-transit) without cache=off can wrap the data keys together", setting, spec.ID)
}

func parseSpec(uri string, role Role) (*KEKSpec, error) {
	p, err := kekproviders.ParseURI(uri)
	if err != nil {
		return nil, err
	}
	return &KEKSpec{Role: role, URI: uri, ID: p.ID, Scheme: p.Scheme, Cached: p.Cached}, nil
}

// withID sets the id parameter of a KEK URI.
func withID(uri, id string) (string, error) {
	u, err := url.Parse(uri)
	if err != nil {
		// A *url.Error quotes the whole URI, which may carry a token.
		var urlErr *url.Error
		if errors.As(err, &urlErr) {
			err = urlErr.Err
		}
		return "", fmt.Errorf("KEK URI: %w", err)
	}
	q := u.Query()
	if q.Has("id") && q.Get("id") != id {
		return "", fmt.Errorf("the KEK id is given twice, differently: in %s and in the KEK URI", kekID.name())
	}
	q.Set("id", id)
	u.RawQuery = q.Encode()
	return u.String(), nil
}
