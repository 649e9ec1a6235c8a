package main

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/keybroker/keybroker/cmd/keybroker/internal/config"
)

// The command line: one tree of commands, from which the usage, the help
// of every command and the shell completion scripts are made.

// cli is what every command runs with.
type cli struct {
	getenv         func(string) string
	stdout, stderr io.Writer
	hooks          *hooks
}

// command is one command: a leaf runs, a group holds subcommands.
// tool runs an operator command that reads only its arguments, the
// environment and its two outputs, as most commands do.
func tool(run func(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error) func(context.Context, []string, *cli) error {
	return func(ctx context.Context, args []string, c *cli) error {
		return run(ctx, args, c.getenv, c.stdout, c.stderr)
	}
}

type command struct {
	name string
	// args follows the name in the overview: "[flags]", "--user ID".
	args    string
	summary string
	// settings are the settings whose flags the command takes (its help
	// and its completion); 0 for a command without flags.
	settings config.Command
	// help is the text of -h for a command without settings, or the
	// introduction of a group's list of subcommands.
	help string
	run  func(ctx context.Context, args []string, c *cli) error
	subs []*command
}

// root is keybroker's command tree; init sets it, since the completion
// commands read the tree they are part of.
var root *command

func init() { root = commandTree() }

func commandTree() *command {
	return &command{name: "keybroker", help: "keybroker — custody of per-user master keys, wrapped by a KEK\n", subs: []*command{
		{name: "serve", args: "[flags]", summary: "run the HTTP API (applies migrations first)", settings: config.Serve,
			run: func(ctx context.Context, args []string, c *cli) error {
				return cmdServe(ctx, args, c.getenv, c.stderr, c.hooks)
			}},
		{name: "migrate", args: "[flags]", summary: "apply database migrations and exit", settings: config.Migrate,
			run: tool(cmdMigrate)},
		{name: "config", summary: "check the configuration as serve would read it, or show it", help: configUsage, subs: []*command{
			{name: "check", args: "[flags]", summary: "open and probe what serve would (KEKs, database, JWKS, TLS); exit 0 if serve would start",
				settings: config.ConfigCheck, run: tool(cmdConfigCheck)},
			{name: "show", args: "[flags]", summary: "print the effective settings, secrets redacted, with where each came from",
				settings: config.ConfigShow, run: tool(cmdConfigShow)},
		}},
		{name: "kek", summary: "KEK and data-key tools", help: kekUsage, subs: []*command{
			{name: "generate", summary: "print a fresh base64 KEK (32 random bytes)",
				help: "Usage: keybroker kek generate\n\nPrints a fresh base64 KEK (32 random bytes from the system's CSPRNG) on stdout,\nthe replacement for \"openssl rand -base64 32\". It takes no flags.\n",
				run:  func(ctx context.Context, args []string, c *cli) error { return cmdKEKGenerate(c.stdout) }},
			{name: "status", args: "[flags]", summary: "rows per KEK id and format, format 1, the data keys, the re-wrap job", settings: config.KEKStatus,
				run: tool(cmdKEKStatus)},
			{name: "check", args: "[flags]", summary: "status and a wrap/unwrap round trip of each KEK", settings: config.KEKCheck,
				run: tool(cmdKEKCheck)},
			{name: "rotate-data-key", args: "[flags]", summary: "mint a new data key (cached envelope mode)", settings: config.KEKRotateDataKey,
				run: tool(cmdKEKRotateDataKey)},
		}},
		{name: "rewrap", args: "[flags]", summary: "move rows to the active KEK now (--dry-run, --rate)", settings: config.Rewrap,
			run: tool(cmdRewrap)},
		{name: "audit", summary: "the audit trail: its rows and partitions, retention, tamper evidence, export", help: auditUsage, subs: []*command{
			{name: "status", args: "[flags]", summary: "rows, oldest and newest row, partitions, the last upkeep run", settings: config.AuditStatus,
				run: tool(cmdAuditStatus)},
			{name: "upkeep", args: "[flags]", summary: "run the audit upkeep once now: partition the table, create partitions ahead, apply the retention",
				settings: config.AuditUpkeep, run: tool(cmdAuditUpkeep)},
			{name: "verify", args: "[flags]", summary: "name every audit row edited, inserted or deleted outside keybroker; exit 1 if any", settings: config.AuditVerify,
				run: tool(cmdAuditVerify)},
			{name: "export", args: "[--cursor-file PATH] [--follow]", summary: "every user's audit rows as NDJSON, resumable from a cursor", settings: config.AuditExport,
				run: tool(cmdAuditExport)},
		}},
		{name: "grant", summary: "mission grant recipients: check their keys, make a worker's key pair", subs: []*command{
			{name: "check", args: "[flags]", summary: "each recipient's key parses and can be wrapped to; exit 1 on a failure", settings: config.GrantCheck,
				run: func(ctx context.Context, args []string, c *cli) error {
					return cmdGrantCheck(args, c.getenv, c.stdout, c.stderr)
				}},
			{name: "keygen", args: "--private-key PATH [flags]", summary: "make a worker's key pair (rsa-oaep-256, hpke-x25519, hpke-mlkem768-x25519)", settings: config.GrantKeygen,
				run: func(ctx context.Context, args []string, c *cli) error {
					return cmdGrantKeygen(args, c.getenv, c.stdout, c.stderr)
				}},
		}},
		{name: "vault", summary: "operator tools for one user's vault", help: vaultUsage, subs: []*command{
			{name: "restore-recovery", args: "--user ID [--discard]", summary: "put back (or forget) the recovery wrap kept before an unverifiable zero-knowledge change",
				settings: config.VaultRestoreRecovery, run: tool(cmdVaultRestoreRecovery)},
		}},
		{name: "dev", summary: "dev-mode tools", subs: []*command{
			{name: "token", args: "--user ID", summary: "print a bearer token from the dev-mode issuer", settings: config.DevToken,
				run: tool(cmdDevToken)},
		}},
		{name: "healthcheck", args: "[--url URL]", summary: "exit 0 when /healthz answers 200 (container health checks; https when serve's TLS is on)",
			settings: config.Healthcheck, run: tool(cmdHealthcheck)},
		{name: "completion", summary: "print a shell completion script", help: completionUsage, subs: []*command{
			{name: "bash", summary: "for bash: source <(keybroker completion bash)", run: completionRun(completionBash)},
			{name: "zsh", summary: "for zsh: keybroker completion zsh > \"${fpath[1]}/_keybroker\"", run: completionRun(completionZsh)},
			{name: "fish", summary: "for fish: keybroker completion fish > ~/.config/fish/completions/keybroker.fish", run: completionRun(completionFish)},
		}},
		{name: "version", summary: "print the version, commit and Go release",
			help: "Usage: keybroker version\n\nPrints the version, the commit and the Go release and platform it was built with.\n",
			run:  func(ctx context.Context, args []string, c *cli) error { printVersion(c.stdout); return nil }},
	}}
}

// helpArg reports whether arg asks for help.
func helpArg(arg string) bool { return arg == "-h" || arg == "-help" || arg == "--help" }

// dispatch runs the command args name under cmd, whose path is parents.
func dispatch(ctx context.Context, cmd *command, parents []string, args []string, c *cli) error {
	path := append(slices.Clone(parents), cmd.name)
	if cmd.subs == nil {
		if cmd.settings == 0 {
			// A command without flags: -h is its help, anything else a
			// mistake (`kek generate -h` must not print a key).
			help := cmd.help
			if help == "" {
				help = fmt.Sprintf("Usage: %s\n\n%s.\n", strings.Join(path, " "), cmd.summary)
			}
			switch {
			case len(args) > 0 && helpArg(args[0]):
				return &config.HelpError{Text: help}
			case len(args) > 0:
				fmt.Fprintf(c.stderr, "%s: unexpected argument %q\n\n%s", strings.Join(path, " "), args[0], help)
				return errUsage
			}
		}
		return cmd.run(ctx, args, c)
	}
	if len(args) == 0 {
		fmt.Fprint(c.stderr, groupUsage(cmd, path))
		return errUsage
	}
	switch name := args[0]; {
	case helpArg(name) || (name == "help" && len(parents) == 0):
		return &config.HelpError{Text: groupUsage(cmd, path)}
	case (name == "--version" || name == "-v") && len(parents) == 0:
		printVersion(c.stdout)
		return nil
	}
	for _, sub := range cmd.subs {
		if sub.name == args[0] {
			return dispatch(ctx, sub, path, args[1:], c)
		}
	}
	fmt.Fprintf(c.stderr, "%s: unknown command %q\n\n%s", strings.Join(path, " "), args[0], groupUsage(cmd, path))
	return errUsage
}

// groupUsage lists the subcommands of a group, after its introduction.
func groupUsage(cmd *command, path []string) string {
	var b strings.Builder
	if cmd.help != "" && len(path) == 1 {
		b.WriteString(cmd.help + "\n")
	}
	b.WriteString("Usage:\n")
	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	var walk func(c *command, prefix string)
	walk = func(c *command, prefix string) {
		for _, sub := range c.subs {
			if sub.subs != nil && len(path) == 1 {
				walk(sub, prefix+sub.name+" ")
				continue
			}
			line := strings.TrimSpace(prefix + sub.name + " " + sub.args)
			fmt.Fprintf(tw, "  %s\t%s\n", line, sub.summary)
		}
	}
	walk(cmd, strings.Join(path, " ")+" ")
	tw.Flush()
	if len(path) > 1 && cmd.help != "" {
		b.WriteString("\n" + cmd.help)
	}
	if len(path) == 1 {
		b.WriteString(`
Run "keybroker COMMAND -h" for a command's flags: each flag that an
environment variable also sets names it, and the README lists them all.
"keybroker completion bash|zsh|fish" prints a shell completion script.
`)
	}
	return b.String()
}

// leaves calls fn for every command that runs, with its path.
func leaves(cmd *command, path []string, fn func(path []string, c *command)) {
	for _, sub := range cmd.subs {
		p := append(slices.Clone(path), sub.name)
		if sub.subs == nil {
			fn(p, sub)
			continue
		}
		leaves(sub, p, fn)
	}
}

// flagNames are the flags a command takes, in the table's order.
func flagNames(cmd *command) []string {
	if cmd.settings == 0 {
		return nil
	}
	var names []string
	for _, s := range config.Settings() {
		if s.Flag != "" && s.FlagCommands&cmd.settings != 0 {
			names = append(names, "--"+s.Flag)
		}
	}
	return append(names, "--help")
}
