// Command keybroker-demo walks the whole keybroker story against a dev
// server it starts itself: init, fetch, recovery code, zero-knowledge on,
// unlock with the code, zero-knowledge off, rotate, status. It prints each
// step and exits non-zero on any surprise. `make demo` runs it.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/keybroker/keybroker/client"
)

func main() {
	binary := flag.String("binary", "bin/keybroker", "the keybroker binary to run in dev mode")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, *binary, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "demo failed:", err)
		os.Exit(1)
	}
}

// run starts the dev server, walks the story and stops the server.
func run(ctx context.Context, binary string, out io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	dataDir, err := os.MkdirTemp("", "keybroker-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dataDir)

	srv, err := startDevServer(ctx, binary, dataDir)
	if err != nil {
		return err
	}
	defer srv.stop()
	fmt.Fprintf(out, "▶ dev server on http://%s (data in %s)\n\n", srv.addr, dataDir)

	token, err := exec.CommandContext(ctx, binary, "dev", "token", "--user", "demo-user", "--data-dir", dataDir).Output()
	if err != nil {
		return fmt.Errorf("dev token: %w", err)
	}
	c, err := client.New(client.Config{BaseURL: "http://" + srv.addr, Token: strings.TrimSpace(string(token)), UserAgent: "keybroker-demo"})
	if err != nil {
		return err
	}
	return story(ctx, c, out)
}

// fingerprint shows a key as a short hash: never print key material.
func fingerprint(key []byte) string {
	sum := sha256.Sum256(key)
	return "sha256:" + hex.EncodeToString(sum[:6])
}

func story(ctx context.Context, c *client.Client, out io.Writer) error {
	step := func(n int, title string) { fmt.Fprintf(out, "%d. %s\n", n, title) }
	say := func(format string, args ...any) { fmt.Fprintf(out, "   "+format+"\n", args...) }

	step(1, "POST /init — mint and wrap a master key")
	initKey, err := c.Init(ctx)
	if err != nil {
		return fmt.Errorf("init: %w", err)
	}
	mk := initKey.MasterKey
	say("master key %s, format %d, wrapped by KEK %q", fingerprint(mk), initKey.FormatVersion, initKey.KEKID)

	step(2, "GET /key — fetch it again")
	got, err := c.Key(ctx)
	if err != nil {
		return fmt.Errorf("key: %w", err)
	}
	if !bytes.Equal(got.MasterKey, mk) {
		return errors.New("GET /key returned another key than /init")
	}
	say("same key %s", fingerprint(got.MasterKey))

	step(3, "POST /recovery-wrap — wrap the key under a recovery code (client side)")
	code, err := c.SetRecoveryCode(ctx, mk)
	if err != nil {
		return fmt.Errorf("recovery wrap: %w", err)
	}
	say("recovery code (the user writes this down; the server never sees it):")
	say("  %s", code)

	step(4, "POST /zero-knowledge {enable:true} — the server drops its own wrap")
	if err := c.EnableZeroKnowledge(ctx); err != nil {
		return fmt.Errorf("enable zero-knowledge: %w", err)
	}
	say("zero-knowledge on")

	step(5, "GET /key — the server can only return the recovery blob")
	blob, err := c.Key(ctx)
	if err != nil {
		return fmt.Errorf("key in zero-knowledge mode: %w", err)
	}
	if !blob.RequiresRecoveryCode || blob.MasterKey != nil {
		return errors.New("in zero-knowledge mode GET /key must not return the master key")
	}
	say("requiresRecoveryCode=true, %d-byte wrap, %d-byte IV", len(blob.RecoveryWrappedMK), len(blob.RecoveryIV))

	step(6, "unlock with the recovery code (client side)")
	unlocked, err := blob.Unlock(code)
	if err != nil {
		return fmt.Errorf("unlock: %w", err)
	}
	if !bytes.Equal(unlocked, mk) {
		return errors.New("the recovery code opened another key")
	}
	say("unlocked %s — the same key", fingerprint(unlocked))
	if _, err := blob.Unlock(wrongCode(code)); !errors.Is(err, client.ErrWrongRecoveryCode) {
		return fmt.Errorf("a wrong recovery code must be refused, got %v", err)
	}
	say("a wrong code is refused")

	step(7, "POST /zero-knowledge {enable:false, masterKey} — the server wraps it again")
	if err := c.DisableZeroKnowledge(ctx, unlocked); err != nil {
		return fmt.Errorf("disable zero-knowledge: %w", err)
	}
	again, err := c.Key(ctx)
	if err != nil || !bytes.Equal(again.MasterKey, mk) {
		return fmt.Errorf("after disabling zero-knowledge GET /key must return the key again (%v)", err)
	}
	say("zero-knowledge off; GET /key returns %s", fingerprint(again.MasterKey))

	step(8, "POST /rotate — a fresh master key (the old one is gone)")
	rotated, err := c.Rotate(ctx)
	if err != nil {
		return fmt.Errorf("rotate: %w", err)
	}
	if bytes.Equal(rotated.MasterKey, mk) {
		return errors.New("rotate returned the old key")
	}
	say("new key %s", fingerprint(rotated.MasterKey))

	step(9, "GET /status")
	st, err := c.Status(ctx)
	if err != nil {
		return fmt.Errorf("status: %w", err)
	}
	if !st.VaultExists || st.ZeroKnowledge || st.HasRecoveryWrap {
		return fmt.Errorf("unexpected status after rotate: %+v", *st)
	}
	say("vaultExists=%t hasRecoveryWrap=%t (rotate cleared it) zeroKnowledge=%t", st.VaultExists, st.HasRecoveryWrap, st.ZeroKnowledge)
	fmt.Fprintln(out, "\n✔ the whole story worked")
	return nil
}

// wrongCode changes one hex digit of a recovery code.
func wrongCode(code string) string {
	b := []byte(code)
	if b[0] == '0' {
		b[0] = '1'
	} else {
		b[0] = '0'
	}
	return string(b)
}

type devServer struct {
	addr string
	cmd  *exec.Cmd
	done chan error
}

// startDevServer runs `keybroker serve --dev` on a free loopback port and
// waits for its "keybroker serving" log line, which carries the address.
func startDevServer(ctx context.Context, binary, dataDir string) (*devServer, error) {
	cmd := exec.Command(binary, "serve", "--dev", "--log-format", "json")
	cmd.Env = append(os.Environ(), "PORT=0", "KEYBROKER_DATA_DIR="+dataDir, "DATABASE_URL=", "KEYBROKER_ENV=")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w (run `make build` first)", binary, err)
	}
	s := &devServer{cmd: cmd, done: make(chan error, 1)}
	addrc := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			var line struct {
				Msg  string `json:"msg"`
				Addr string `json:"addr"`
			}
			if json.Unmarshal(sc.Bytes(), &line) == nil && line.Msg == "keybroker serving" {
				addrc <- line.Addr
			}
		}
		s.done <- cmd.Wait()
	}()
	select {
	case s.addr = <-addrc:
		return s, nil
	case err := <-s.done:
		return nil, fmt.Errorf("dev server exited: %v", err)
	case <-ctx.Done():
		s.stop()
		return nil, fmt.Errorf("dev server did not start: %w", ctx.Err())
	}
}

func (s *devServer) stop() {
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(20 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
	}
}
