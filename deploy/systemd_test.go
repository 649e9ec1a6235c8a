package deploy

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/kekproviders"
)

// maxExposure is the highest `systemd-analyze security` exposure the unit
// may have (0 is fully locked down, 10 fully exposed). The unit scores
// 1.1 with systemd 252; the margin allows for a newer systemd weighing
// settings differently, not for loosening the unit.
const maxExposure = 2.0

// unitFile is a systemd unit as key → values per section. Comment lines
// are kept apart, since the unit documents alternatives in comments.
type unitFile struct {
	sections map[string]map[string][]string
	comments []string
}

func parseUnit(t *testing.T, path string) unitFile {
	t.Helper()
	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	u := unitFile{sections: map[string]map[string][]string{}}
	section := ""
	sc := bufio.NewScanner(bytes.NewReader(raw))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "":
		case strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
			u.comments = append(u.comments, strings.TrimSpace(line[1:]))
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = line[1 : len(line)-1]
			u.sections[section] = map[string][]string{}
		default:
			key, value, ok := strings.Cut(line, "=")
			require.True(t, ok, "%s: not key=value: %q", path, line)
			require.NotEmpty(t, section, "%s: %q outside a section", path, line)
			u.sections[section][key] = append(u.sections[section][key], value)
		}
	}
	return u
}

// get returns the single value of key in section.
func (u unitFile) get(t *testing.T, section, key string) string {
	t.Helper()
	vs := u.sections[section][key]
	require.Len(t, vs, 1, "[%s] %s", section, key)
	return vs[0]
}

// parseEnvFile reads KEY=VALUE lines, ignoring comments.
func parseEnvFile(t *testing.T, path string) (set map[string]string, commented []string) {
	t.Helper()
	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	set = map[string]string{}
	for _, line := range strings.Split(string(raw), "\n") {
		line = strings.TrimSpace(line)
		if line == "" {
			continue
		}
		if strings.HasPrefix(line, "#") {
			commented = append(commented, strings.TrimSpace(strings.TrimPrefix(line, "#")))
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		require.True(t, ok, "%s: not KEY=VALUE: %q", path, line)
		set[k] = v
	}
	return set, commented
}

func TestSystemdUnit(t *testing.T) {
	t.Parallel()
	u := parseUnit(t, "systemd/keybroker.service")
	for key, want := range map[string]string{
		"Type":                  "notify",
		"NotifyAccess":          "main",
		"DynamicUser":           "yes",
		"ProtectSystem":         "strict",
		"NoNewPrivileges":       "yes",
		"PrivateTmp":            "yes",
		"ProtectHome":           "yes",
		"CapabilityBoundingSet": "",
		"Restart":               "on-failure",
	} {
		require.Equal(t, want, u.get(t, "Service", key), key)
	}
	require.Contains(t, u.sections["Service"]["SystemCallFilter"], "@system-service")
	require.Contains(t, u.sections["Service"]["SystemCallFilter"], "~@privileged @resources")
	require.Equal(t, "native", u.get(t, "Service", "SystemCallArchitectures"))

	watchdog, err := time.ParseDuration(u.get(t, "Service", "WatchdogSec"))
	require.NoError(t, err)
	require.Greater(t, watchdog, 5*time.Second, "pings every WatchdogSec/2 include a store round trip")

	// The KEK is a credential, never an environment value; the encrypted
	// (TPM-bound) variant is documented next to it under the same name.
	cred := u.get(t, "Service", "LoadCredential")
	name, source, ok := strings.Cut(cred, ":")
	require.True(t, ok)
	require.True(t, filepath.IsAbs(source), source)
	require.Contains(t, u.comments, "LoadCredentialEncrypted="+name+":/etc/keybroker/kek.cred")
	require.Contains(t, strings.Join(u.comments, "\n"), "systemd-creds encrypt --with-key=tpm2 --name="+name)
	for _, env := range u.sections["Service"]["Environment"] {
		k, v, _ := strings.Cut(env, "=")
		require.NotEqual(t, kekproviders.LegacyVariable, k, "the KEK must not be in the unit's environment")
		require.False(t, looksLikeKey(v), "key material in Environment=%s", k)
	}
	require.Equal(t, []string{"KEYBROKER_ENV=production"}, u.sections["Service"]["Environment"])

	// The environment file names exactly that credential, and holds no
	// key material of its own.
	envFile := u.get(t, "Service", "EnvironmentFile")
	require.False(t, strings.HasPrefix(envFile, "-"), "a missing environment file must fail the start")
	env, commented := parseEnvFile(t, "systemd/keybroker.env.example")
	p, err := kekproviders.ParseURI(env["KEYBROKER_KEK"])
	require.NoError(t, err)
	require.Equal(t, kekproviders.SchemeSystemd, p.Scheme)
	require.Equal(t, name, strings.TrimPrefix(p.URL.Host+p.URL.Path, "/"), "KEYBROKER_KEK names the LoadCredential= credential")
	for k, v := range env {
		require.NotEqual(t, kekproviders.LegacyVariable, k)
		require.False(t, looksLikeKey(v), "key material in %s", k)
	}
	noPassword(t, env["DATABASE_URL"])
	for _, line := range commented {
		if k, v, ok := strings.Cut(line, "="); ok && !strings.Contains(k, " ") {
			require.False(t, looksLikeKey(v), "key material in a commented %s", k)
		}
	}

	sock := parseUnit(t, "systemd/keybroker.socket")
	var listens []string
	for key, values := range sock.sections["Socket"] {
		if strings.HasPrefix(key, "Listen") {
			listens = append(listens, values...)
		}
	}
	require.Len(t, listens, 1, "keybroker serves exactly one socket")
}

// TestSystemdAnalyze runs systemd's own checks on copies of the units
// whose ExecStart= is the freshly built binary (verify needs it to exist).
func TestSystemdAnalyze(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("SKIPPED LOUDLY: systemd-analyze is not installed; the unit files were not verified")
	}
	bin := keybrokerBinary(t)
	dir := t.TempDir()
	unit, err := os.ReadFile("systemd/keybroker.service")
	require.NoError(t, err)
	const execStart = "ExecStart=/usr/local/bin/keybroker serve"
	require.Contains(t, string(unit), execStart)
	unit = bytes.Replace(unit, []byte(execStart), []byte("ExecStart="+bin+" serve"), 1)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "keybroker.service"), unit, 0o644))
	socket, err := os.ReadFile("systemd/keybroker.socket")
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "keybroker.socket"), socket, 0o644))
	service, socketUnit := filepath.Join(dir, "keybroker.service"), filepath.Join(dir, "keybroker.socket")

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// An unknown key only warns and exits 0: any output is a failure.
	out, err := exec.CommandContext(ctx, analyze, "verify", service, socketUnit).CombinedOutput()
	require.NoError(t, err, "%s", out)
	require.Empty(t, string(out))

	// The exit status enforces the threshold (in tenths); the score is
	// parsed to say what it was.
	out, err = exec.CommandContext(ctx, analyze, "security", "--offline=true",
		"--threshold="+strconv.Itoa(int(maxExposure*10)), service).CombinedOutput()
	m := regexp.MustCompile(`Overall exposure level for keybroker\.service: ([0-9.]+)`).FindSubmatch(out)
	require.NotNil(t, m, "%s", out)
	score, perr := strconv.ParseFloat(string(m[1]), 64)
	require.NoError(t, perr)
	t.Logf("systemd-analyze security: exposure %.1f (threshold %.1f)", score, maxExposure)
	require.NoError(t, err, "exposure %.1f is above %.1f:\n%s", score, maxExposure, out)
	require.LessOrEqual(t, score, maxExposure)
}
