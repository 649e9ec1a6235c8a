package main

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"os"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/keybroker/keybroker/cmd/keybroker/internal/config"
)

// openPTY opens a pseudo-terminal pair: writes to the returned tty come
// out of master.
func openPTY(t *testing.T) (master, tty *os.File) {
	t.Helper()
	master, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals on this machine (/dev/ptmx: %v): the terminal log format is untested here", err)
	}
	t.Cleanup(func() { master.Close() })
	require.NoError(t, unix.IoctlSetPointerInt(int(master.Fd()), unix.TIOCSPTLCK, 0))
	n, err := unix.IoctlGetInt(int(master.Fd()), unix.TIOCGPTN)
	require.NoError(t, err)
	tty, err = os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	require.NoError(t, err)
	t.Cleanup(func() { tty.Close() })
	return master, tty
}

// TestLogsAreTextOnATerminal: with no format configured, a person at a
// terminal gets text and anything else JSON.
func TestLogsAreTextOnATerminal(t *testing.T) {
	t.Parallel()
	master, tty := openPTY(t)
	log := newLogger(config.Log{Level: slog.LevelInfo}, tty)
	log.Info("hello")
	buf := make([]byte, 256)
	n, err := master.Read(buf)
	require.NoError(t, err)
	require.True(t, bytes.HasPrefix(buf[:n], []byte("time=")), "a terminal gets text: %q", buf[:n])

	f, err := os.CreateTemp(t.TempDir(), "log")
	require.NoError(t, err)
	defer f.Close()
	log = newLogger(config.Log{Level: slog.LevelInfo}, f)
	log.Info("hello")
	_, err = f.Seek(0, io.SeekStart)
	require.NoError(t, err)
	out, err := io.ReadAll(f)
	require.NoError(t, err)
	require.True(t, bytes.HasPrefix(out, []byte(`{"time":`)), "a file gets JSON: %q", out)
}
