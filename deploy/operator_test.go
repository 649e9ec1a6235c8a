package deploy

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/kekproviders"
)

// systemdRunCommands are the `systemd-run … keybroker …` commands the
// documentation gives operators, each joined onto one line.
func systemdRunCommands(t *testing.T, doc string) [][]string {
	t.Helper()
	raw, err := os.ReadFile(doc)
	require.NoError(t, err)
	text := strings.ReplaceAll(string(raw), "\\\n", " ")
	var cmds [][]string
	for _, m := range regexp.MustCompile("(?m)sudo (systemd-run [^`\n]*/usr/local/bin/keybroker [a-z -]+)").FindAllStringSubmatch(text, -1) {
		cmds = append(cmds, strings.Fields(m[1]))
	}
	return cmds
}

// transientUnit turns a systemd-run command line into what it asks of
// systemd: the options, the unit properties (-p) and the command.
func transientUnit(t *testing.T, argv []string) (options []string, properties []string, command []string) {
	t.Helper()
	require.Equal(t, "systemd-run", argv[0])
	for i := 1; i < len(argv); i++ {
		switch a := argv[i]; {
		case a == "-p" || a == "--property":
			i++
			properties = append(properties, argv[i])
		case strings.HasPrefix(a, "-"):
			options = append(options, a)
		default:
			return options, properties, argv[i:]
		}
	}
	t.Fatalf("no command in %v", argv)
	return nil, nil, nil
}

// TestOperatorCommandsRunWithTheUnitsCredential: the documented
// systemd-run commands give a command the unit's credential, settings and
// user. systemd-run's own help knows each option, systemd-analyze verify
// accepts the properties as a service, the credential is the one the
// unit loads and the environment file names; and keybroker, given what
// systemd would give it ($CREDENTIALS_DIRECTORY with the credential, the
// environment file's settings), checks the KEK — without, it says which
// command to run.
func TestOperatorCommandsRunWithTheUnitsCredential(t *testing.T) {
	t.Parallel()
	cmds := append(systemdRunCommands(t, "README.md"), systemdRunCommands(t, "../docs/rotation.md")...)
	require.GreaterOrEqual(t, len(cmds), 3, "deploy/README.md and docs/rotation.md document the command")

	unit := parseUnit(t, "systemd/keybroker.service")
	loaded := unit.get(t, "Service", "LoadCredential")
	envFile := unit.get(t, "Service", "EnvironmentFile")
	env, _ := parseEnvFile(t, "systemd/keybroker.env.example")
	p, err := kekproviders.ParseURI(env["KEYBROKER_KEK"])
	require.NoError(t, err)
	credential := strings.TrimPrefix(p.URL.Host+p.URL.Path, "/")

	help := ""
	if run, err := exec.LookPath("systemd-run"); err == nil {
		out, err := exec.Command(run, "--help").CombinedOutput()
		require.NoError(t, err, "%s", out)
		help = string(out)
	} else {
		t.Log("SKIPPED LOUDLY: systemd-run is not installed; its options were not checked against its help")
	}
	analyze, analyzeErr := exec.LookPath("systemd-analyze")
	bin := keybrokerBinary(t)
	for _, argv := range cmds {
		options, properties, command := transientUnit(t, argv)
		require.Equal(t, "/usr/local/bin/keybroker", command[0], "%v", argv)
		for _, o := range options {
			if help != "" {
				require.Contains(t, help, strings.SplitN(o, "=", 2)[0], "systemd-run knows %s", o)
			}
		}
		require.Contains(t, options, "--pipe", "the command's output and exit status reach the operator")
		require.Contains(t, options, "--wait")
		require.Contains(t, properties, "EnvironmentFile="+envFile, "%v", argv)
		require.Contains(t, properties, "DynamicUser=yes", "%v", argv)
		require.Contains(t, properties, "User=keybroker", "the unit's dynamic user: peer authentication as for serve")
		var credentials []string
		for _, prop := range properties {
			if k, v, _ := strings.Cut(prop, "="); k == "LoadCredential" || k == "LoadCredentialEncrypted" {
				credentials = append(credentials, v)
			}
		}
		require.Contains(t, credentials, loaded, "%v: the credential the unit loads", argv)
		require.True(t, strings.HasPrefix(loaded, credential+":"))

		if analyzeErr != nil {
			continue
		}
		// systemd-analyze verify checks the properties as a unit's
		// settings (it needs the binary to exist: the fresh build).
		dir := t.TempDir()
		content := "[Service]\nType=oneshot\nExecStart=" + bin + " " + strings.Join(command[1:], " ") + "\n" + strings.Join(properties, "\n") + "\n"
		path := filepath.Join(dir, "keybroker-ops.service")
		require.NoError(t, os.WriteFile(path, []byte(content), 0o644))
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		out, err := exec.CommandContext(ctx, analyze, "verify", path).CombinedOutput()
		cancel()
		require.NoError(t, err, "%s\n%s", content, out)
		require.Empty(t, string(out), "systemd-analyze verify on\n%s", content)
	}
	if analyzeErr != nil {
		t.Log("SKIPPED LOUDLY: systemd-analyze is not installed; the transient units were not verified")
	}

	// What systemd gives the command: the credential in a private
	// directory, the settings of the environment file.
	credDir := t.TempDir()
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	require.NoError(t, os.WriteFile(filepath.Join(credDir, credential), []byte(base64.StdEncoding.EncodeToString(key)), 0o400))
	check := exec.Command(bin, "kek", "check")
	check.Env = []string{"KEYBROKER_KEK=" + env["KEYBROKER_KEK"], "CREDENTIALS_DIRECTORY=" + credDir}
	out, err := check.CombinedOutput()
	require.NoError(t, err, "%s", out)
	require.Regexp(t, p.ID+`\s+active\s+ok`, string(out))

	check = exec.Command(bin, "kek", "check")
	check.Env = []string{"KEYBROKER_KEK=" + env["KEYBROKER_KEK"]}
	out, err = check.CombinedOutput()
	require.Error(t, err, "outside the unit")
	require.Contains(t, string(out), "$CREDENTIALS_DIRECTORY is not set")
	require.Contains(t, string(out), "sudo systemd-run --pipe --wait")
	require.Contains(t, string(out), "-p LoadCredential="+credential+":/etc/keybroker/kek")
	require.Contains(t, string(out), `deploy/README.md, "Operator commands"`)
}
