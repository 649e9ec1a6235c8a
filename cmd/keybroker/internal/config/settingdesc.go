package config

import (
	"fmt"
	"strings"

	"github.com/keybroker/keybroker/kekproviders"
	"github.com/keybroker/keybroker/pgstore"
)

// How a setting of the table is described, named and shown.

// setting is one row of the table: a value keybroker reads, from its
// flag, else its variable, else its default.
type setting struct {
	env    string // "" for a flag alone
	altEnv string // read when env is unset: the original service's name
	flag   string // "" for a variable alone
	def    string
	// toolDef is the default in the operator commands, when it differs.
	toolDef string
	usage   string
	// value names the flag's value in the help (URL, DURATION, N); VALUE
	// when empty.
	value  string
	isBool bool // a boolean flag: --dev alone means true
	secret bool // never printed
	cmds   Command
	// flagCmds are the commands that take the flag; default cmds. The
	// others read the variable alone (healthcheck reads serve's address).
	flagCmds Command
	// apply parses and checks the value into the configuration. Its error
	// says what is wrong; Resolve adds the setting's name.
	apply func(c *Config, v string) error
}

// in reports whether cmd reads s. The config commands read what serve
// reads, and their own flags.
func (s *setting) in(cmd Command) bool {
	return s.cmds&cmd != 0 || (cmd&configCmds != 0 && s.cmds&Serve != 0)
}

func (s *setting) flagIn(cmd Command) bool {
	if cmd&configCmds != 0 && s.cmds&cmd == 0 {
		cmd = Serve
	}
	return s.flagCmds == 0 || s.flagCmds&cmd != 0
}

func (s *setting) defaultFor(cmd Command) string {
	if s.toolDef != "" && cmd&Tools != 0 {
		return s.toolDef
	}
	return s.def
}

// name is how messages name the setting: "$KEYBROKER_REWRAP_BATCH
// (--rewrap-batch)", "$PORT" or "--batch".
func (s *setting) name() string {
	switch {
	case s.env == "":
		return "--" + s.flag
	case s.flag == "":
		return "$" + s.env
	case s.altEnv != "":
		return fmt.Sprintf("$%s or $%s (--%s)", s.env, s.altEnv, s.flag)
	default:
		return fmt.Sprintf("$%s (--%s)", s.env, s.flag)
	}
}

func (s *setting) usageText() string {
	switch {
	case s.env == "":
		return s.usage
	case s.altEnv != "":
		return fmt.Sprintf("%s ($%s or $%s)", s.usage, s.env, s.altEnv)
	default:
		return fmt.Sprintf("%s ($%s)", s.usage, s.env)
	}
}

// metavar names a flag's value in the help: the word in `backquotes` of
// its usage, or VALUE.
func (s *setting) metavar() string {
	if s.value != "" {
		return s.value
	}
	return "VALUE"
}

// shown is v as Values prints it.
func (s *setting) shown(v string) string {
	switch {
	case v == "":
		return ""
	case s.secret:
		return "REDACTED"
	case s == databaseURL:
		return pgstore.RedactURL(v)
	case s == kekURI || s == kekRetired:
		// A careless URI may carry a token.
		uris := SplitList(v)
		for i, uri := range uris {
			uris[i] = kekproviders.RedactURI(uri)
		}
		return strings.Join(uris, " ")
	}
	return v
}
