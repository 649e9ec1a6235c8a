package main

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/keybroker/keybroker/cmd/keybroker/internal/config"
)

// Shell completion scripts, made from the command tree and the settings
// table, so that they offer exactly the commands and flags that parse.

const completionUsage = `Prints a completion script for the shell on stdout. It completes the
commands, and each command's flags after a "-".
  bash:  source <(keybroker completion bash)        (or save it in /etc/bash_completion.d/keybroker)
  zsh:   keybroker completion zsh > "${fpath[1]}/_keybroker"   (then start a new shell)
  fish:  keybroker completion fish > ~/.config/fish/completions/keybroker.fish
`

// completionRun is the run of `keybroker completion SHELL`.
func completionRun(script func(io.Writer)) func(context.Context, []string, *cli) error {
	return func(_ context.Context, _ []string, c *cli) error {
		script(c.stdout)
		return nil
	}
}

// completionNode is one command path with what completes after it: the
// subcommands of a group, or the flags of a leaf.
type completionNode struct {
	path  string // "", "kek", "kek check"
	words []string
	leaf  bool
}

// completionNodes lists every command path of the tree, the root first.
func completionNodes() []completionNode {
	var nodes []completionNode
	var walk func(cmd *command, path string)
	walk = func(cmd *command, path string) {
		if cmd.subs == nil {
			nodes = append(nodes, completionNode{path: path, words: flagNames(cmd), leaf: true})
			return
		}
		node := completionNode{path: path}
		for _, sub := range cmd.subs {
			node.words = append(node.words, sub.name)
		}
		nodes = append(nodes, node)
		for _, sub := range cmd.subs {
			walk(sub, strings.TrimSpace(path+" "+sub.name))
		}
	}
	walk(root, "")
	return nodes
}

// shellQuote quotes s for bash, zsh and fish alike: in single quotes.
func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// fishQuote quotes s for fish, which escapes within single quotes.
func fishQuote(s string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'"
}

// knownPaths is the case pattern of every command path but the root.
func knownPaths(nodes []completionNode) string {
	var quoted []string
	for _, n := range nodes[1:] {
		quoted = append(quoted, shellQuote(n.path))
	}
	return strings.Join(quoted, "|")
}

func completionBash(w io.Writer) {
	nodes := completionNodes()
	fmt.Fprintf(w, `# bash completion for keybroker, made by "keybroker completion bash" (%s).
# Load it with: source <(keybroker completion bash)
_keybroker() {
    local cur="${COMP_WORDS[COMP_CWORD]}" cmdpath="" word i
    for ((i = 1; i < COMP_CWORD; i++)); do
        word="${COMP_WORDS[i]}"
        case "$word" in -*) continue ;; esac
        case "${cmdpath:+$cmdpath }$word" in
            %s) cmdpath="${cmdpath:+$cmdpath }$word" ;;
        esac
    done
    local words="" leaf=""
    case "$cmdpath" in
`, version, knownPaths(nodes))
	for _, n := range nodes {
		leaf := ""
		if n.leaf {
			leaf = " leaf=1"
		}
		fmt.Fprintf(w, "        %s) words=%s;%s ;;\n", shellQuote(n.path), shellQuote(strings.Join(n.words, " ")), leaf)
	}
	fmt.Fprint(w, `    esac
    # A command's flags after a "-"; its values (paths) as bash would.
    if [[ -n $leaf && $cur != -* ]]; then
        COMPREPLY=()
        return
    fi
    COMPREPLY=($(compgen -W "$words" -- "$cur"))
}
complete -o default -F _keybroker keybroker
`)
}

func completionZsh(w io.Writer) {
	nodes := completionNodes()
	fmt.Fprintf(w, `#compdef keybroker
# zsh completion for keybroker, made by "keybroker completion zsh" (%s).
# Install: keybroker completion zsh > "${fpath[1]}/_keybroker", then start a new shell.
_keybroker() {
  local cmdpath="" word leaf=""
  local -a candidates
  for word in "${(@)words[2,CURRENT-1]}"; do
    [[ $word == -* ]] && continue
    case "${cmdpath:+$cmdpath }$word" in
      (%s) cmdpath="${cmdpath:+$cmdpath }$word" ;;
    esac
  done
  case "$cmdpath" in
`, version, knownPaths(nodes))
	for _, n := range nodes {
		leaf := ""
		if n.leaf {
			leaf = " leaf=1"
		}
		var quoted []string
		for _, word := range n.words {
			quoted = append(quoted, shellQuote(word))
		}
		fmt.Fprintf(w, "    (%s) candidates=(%s);%s ;;\n", shellQuote(n.path), strings.Join(quoted, " "), leaf)
	}
	fmt.Fprint(w, `  esac
  if [[ -n $leaf && $PREFIX != -* ]]; then
    _files
    return
  fi
  compadd -a candidates
}
if [[ "${funcstack[1]}" == _keybroker ]]; then
  _keybroker "$@"
else
  compdef _keybroker keybroker
fi
`)
}

func completionFish(w io.Writer) {
	fmt.Fprintf(w, "# fish completion for keybroker, made by \"keybroker completion fish\" (%s).\n", version)
	fmt.Fprintln(w, "# Install: keybroker completion fish > ~/.config/fish/completions/keybroker.fish")
	fmt.Fprintln(w, "complete -c keybroker -f")
	var walk func(cmd *command, path []string)
	walk = func(cmd *command, path []string) {
		// The condition under which cmd's subcommands or flags complete.
		cond := "__fish_use_subcommand"
		if len(path) > 0 {
			var parts []string
			for _, name := range path {
				parts = append(parts, "__fish_seen_subcommand_from "+name)
			}
			cond = strings.Join(parts, "; and ")
		}
		if cmd.subs == nil {
			for _, s := range config.Settings() {
				if s.Flag == "" || s.FlagCommands&cmd.settings == 0 || cmd.settings == 0 {
					continue
				}
				takesValue := " -r -F"
				if s.IsBool {
					takesValue = ""
				}
				fmt.Fprintf(w, "complete -c keybroker -n %s -l %s%s -d %s\n", fishQuote(cond), s.Flag, takesValue, fishQuote(firstClause(s.Usage)))
			}
			return
		}
		var names []string
		for _, sub := range cmd.subs {
			names = append(names, sub.name)
		}
		if len(path) > 0 {
			cond += "; and not __fish_seen_subcommand_from " + strings.Join(names, " ")
		}
		for _, sub := range cmd.subs {
			fmt.Fprintf(w, "complete -c keybroker -n %s -a %s -d %s\n", fishQuote(cond), sub.name, fishQuote(sub.summary))
		}
		for _, sub := range cmd.subs {
			walk(sub, append(append([]string(nil), path...), sub.name))
		}
	}
	walk(root, nil)
}

// firstClause is a flag's usage up to its first ";", for a one-line
// description.
func firstClause(usage string) string {
	first, _, _ := strings.Cut(usage, ";")
	return first
}
