package faults

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Bounds of the waits on a keybroker process.
const (
	// ServeWithin bounds the wait for "keybroker serving".
	ServeWithin = 60 * time.Second
	// ExitWithin bounds the wait for the process to exit.
	ExitWithin = 30 * time.Second
)

var build struct {
	once sync.Once
	dir  string
	bin  string
	err  error
}

// Keybroker returns the path of the keybroker binary, built once per test
// binary (static, no cgo, as the Dockerfile builds it). Call
// RemoveBuild from TestMain to delete it afterwards.
func Keybroker(t testing.TB) string {
	t.Helper()
	build.once.Do(func() {
		goTool, err := exec.LookPath("go")
		if err != nil {
			build.err = fmt.Errorf("no go tool on PATH: %w", err)
			return
		}
		mod, err := exec.Command(goTool, "env", "GOMOD").Output()
		if err != nil || strings.TrimSpace(string(mod)) == "" || strings.TrimSpace(string(mod)) == os.DevNull {
			build.err = fmt.Errorf("cannot find the module root (go env GOMOD: %q, %v)", mod, err)
			return
		}
		if build.dir, err = os.MkdirTemp("", "kbbin-"); err != nil {
			build.err = err
			return
		}
		bin := filepath.Join(build.dir, "keybroker")
		cmd := exec.Command(goTool, "build", "-trimpath", "-o", bin, "./cmd/keybroker")
		cmd.Dir = filepath.Dir(strings.TrimSpace(string(mod)))
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			build.err = fmt.Errorf("go build ./cmd/keybroker: %v\n%s", err, out)
			return
		}
		build.bin = bin
	})
	if build.err != nil {
		t.Fatalf("faults: %v", build.err)
	}
	return build.bin
}

// RemoveBuild deletes the binary Keybroker built, if any.
func RemoveBuild() {
	if build.dir != "" {
		_ = os.RemoveAll(build.dir)
	}
}

// Server is one `keybroker serve` process.
type Server struct {
	// URL is http://ADDR of the address the server reported serving on.
	URL string

	cmd    *exec.Cmd
	exited chan struct{}
	err    error // Wait's result, valid once exited is closed

	mu  sync.Mutex
	log bytes.Buffer
}

// StartServer runs `bin serve` with exactly env (nothing is inherited but
// PATH) and waits until it logs that it serves. env must make it listen
// on 127.0.0.1:0 (KEYBROKER_ADDR) and log JSON (the default). The process
// is killed when the test ends if it still runs.
func StartServer(t testing.TB, bin string, env []string) *Server {
	t.Helper()
	cmd := exec.Command(bin, "serve")
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, env...)
	return StartCommand(t, cmd)
}

// StartCommand starts cmd — `keybroker serve` with its own arguments,
// directory and environment, or a shell that ends by exec'ing it — and
// waits until it logs, as JSON, that it serves. Its stdout and stderr
// are the log; the process is killed when the test ends if it still runs.
func StartCommand(t testing.TB, cmd *exec.Cmd) *Server {
	t.Helper()
	logr, logw, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = logw, logw
	s := &Server{cmd: cmd, exited: make(chan struct{})}
	if err := cmd.Start(); err != nil {
		logr.Close()
		logw.Close()
		t.Fatalf("faults: start keybroker: %v", err)
	}
	logw.Close() // the child holds its own copy
	ready := make(chan string, 1)
	logDone := make(chan struct{})
	go func() {
		defer close(logDone)
		defer logr.Close()
		s.follow(logr, ready)
	}()
	go func() {
		s.err = cmd.Wait()
		<-logDone // everything the process wrote is in s.log
		close(s.exited)
	}()
	t.Cleanup(func() {
		select {
		case <-s.exited:
		default:
			_ = cmd.Process.Kill()
			<-s.exited
		}
	})
	select {
	case addr := <-ready:
		s.URL = "http://" + addr
		return s
	case <-s.exited:
		t.Fatalf("faults: keybroker exited before serving (%v):\n%s", s.err, s.Logs())
	case <-time.After(ServeWithin):
		t.Fatalf("faults: keybroker not serving after %s:\n%s", ServeWithin, s.Logs())
	}
	return nil
}

// follow copies the log into s.log and reports the serving address.
func (s *Server) follow(r io.Reader, ready chan<- string) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	found := false
	for sc.Scan() {
		line := sc.Bytes()
		s.mu.Lock()
		s.log.Write(line)
		s.log.WriteByte('\n')
		s.mu.Unlock()
		if found || !bytes.Contains(line, []byte("keybroker serving")) {
			continue
		}
		var entry struct {
			Msg  string `json:"msg"`
			Addr string `json:"addr"`
		}
		if json.Unmarshal(line, &entry) == nil && entry.Msg == "keybroker serving" && entry.Addr != "" {
			found = true
			ready <- entry.Addr
		}
	}
	// Drain so that a process writing after a scanner error never blocks.
	_, _ = io.Copy(io.Discard, r)
}

// Logs returns everything the process has written so far.
func (s *Server) Logs() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.log.String()
}

// Kill sends SIGKILL — no shutdown, no flush, as a crash or an OOM kill —
// and waits until the process is gone.
func (s *Server) Kill(t testing.TB) {
	t.Helper()
	_ = s.cmd.Process.Signal(syscall.SIGKILL)
	s.wait(t)
}

// Stop sends SIGTERM and waits for the graceful exit; it fails the test
// when the process exits with an error.
func (s *Server) Stop(t testing.TB) {
	t.Helper()
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	s.wait(t)
	if s.err != nil {
		t.Fatalf("faults: keybroker exited with %v:\n%s", s.err, s.Logs())
	}
}

func (s *Server) wait(t testing.TB) {
	t.Helper()
	select {
	case <-s.exited:
	case <-time.After(ExitWithin):
		t.Fatalf("faults: keybroker did not exit within %s", ExitWithin)
	}
}
