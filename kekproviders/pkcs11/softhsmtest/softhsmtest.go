// Package softhsmtest gives tests SoftHSM2 tokens of their own: Debian's
// softhsm2 package (`apt-get install softhsm2`, which .ci/run does) is a
// PKCS#11 module that keeps its tokens in files.
//
// SoftHSM reads its configuration ($SOFTHSM2_CONF) once per process, when
// the module is initialized, so a test binary has one token directory:
// TestMain wraps its testing.M with Wrap, which points SOFTHSM2_CONF at a
// temporary directory for the run and removes it afterwards. Each test
// then makes tokens with NewToken (cgo builds only), which initializes a
// token and its user PIN through the PKCS#11 API in this process (a token
// made by another process after initialization would not be seen).
//
// When the module is missing, tests are skipped loudly on a developer's
// machine and fail in CI (CI=true).
package softhsmtest

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// modulePaths are where Debian installs the module.
var modulePaths = []string{
	"/usr/lib/softhsm/libsofthsm2.so",
	"/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
	"/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
}

// ModulePath returns the SoftHSM2 module's path, or "" when it is not
// installed.
func ModulePath() string {
	for _, p := range modulePaths {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	return ""
}

// TestingM is what Wrap wraps: *testing.M, or what goleak.VerifyTestMain
// takes.
type TestingM interface{ Run() int }

var state struct {
	sync.Mutex
	dir      string // the run's SoftHSM directory
	tokenDir string
}

type wrapped struct{ m TestingM }

// Wrap returns m with a SoftHSM2 configuration of its own for the run:
// SOFTHSM2_CONF names a file in a temporary directory, which holds the
// tokens and is removed when the tests are done.
func Wrap(m TestingM) TestingM { return wrapped{m} }

func (w wrapped) Run() int {
	dir, err := os.MkdirTemp("", "keybroker-softhsm-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "softhsmtest:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	tokenDir := filepath.Join(dir, "tokens")
	conf := filepath.Join(dir, "softhsm2.conf")
	text := "directories.tokendir = " + tokenDir + "\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n"
	if err := os.Mkdir(tokenDir, 0o700); err != nil {
		fmt.Fprintln(os.Stderr, "softhsmtest:", err)
		return 1
	}
	if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
		fmt.Fprintln(os.Stderr, "softhsmtest:", err)
		return 1
	}
	os.Setenv("SOFTHSM2_CONF", conf)
	state.Lock()
	state.dir, state.tokenDir = dir, tokenDir
	state.Unlock()
	return w.m.Run()
}

// InCI reports whether the tests run in CI, where a missing SoftHSM is a
// failure, not a skip.
func InCI() bool {
	v := strings.ToLower(os.Getenv("CI"))
	return v != "" && v != "0" && v != "false"
}

// Require returns the module path, or stops the test: loudly skipped on a
// developer's machine without softhsm2, failed in CI or when TestMain did
// not call Wrap.
func Require(t testing.TB) string {
	t.Helper()
	state.Lock()
	tokenDir := state.tokenDir
	state.Unlock()
	if tokenDir == "" {
		t.Fatal("softhsmtest: TestMain must run the tests through softhsmtest.Wrap(m)")
	}
	path := ModulePath()
	if path != "" {
		return path
	}
	reason := "the SoftHSM2 PKCS#11 module is not installed (" + strings.Join(modulePaths, ", ") + "): apt-get install softhsm2"
	if InCI() {
		t.Fatalf("PKCS#11 TEST CANNOT RUN IN CI: %s (.ci/run installs it)", reason)
	}
	msg := fmt.Sprintf("\n\n*** PKCS#11 TEST SKIPPED: %s\n*** .ci/run installs it; with CI=true this is a failure. ***\n\n", reason)
	fmt.Fprint(os.Stderr, msg)
	t.Skip(msg)
	return ""
}

// tokenDir is the run's token directory.
func tokenDir() string {
	state.Lock()
	defer state.Unlock()
	return state.tokenDir
}
