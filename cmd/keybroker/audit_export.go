package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/cmd/keybroker/internal/config"
)

const auditExportUsage = `Usage: keybroker audit export [--cursor-file PATH] [--follow] [flags]

Writes every user's audit rows to stdout as NDJSON, one object per line,
oldest first, in (created_at, id) order (fields in docs/audit.md). Only
rows older than 15s are written, so that a row whose transaction is still
committing is not skipped. With --cursor-file the export resumes after the
last row it wrote: the file is read at start and replaced after each batch
has been written and flushed (delivery is at least once: deduplicate by
id). With --follow it keeps running and writes new rows as they settle.
Each line also carries its cursor, which --cursor-file accepts.
`

// auditExportBatch is the rows read per query.
const auditExportBatch = 1000

// auditExportPoll is the pause of --follow when it has caught up.
const auditExportPoll = time.Second

// auditLine is one exported row (docs/audit.md, "Export").
type auditLine struct {
	ID        string  `json:"id"`
	UserID    string  `json:"user_id"`
	Action    string  `json:"action"`
	Status    int     `json:"status"`
	IPAddress *string `json:"ip_address"`
	UserAgent *string `json:"user_agent"`
	Context   *string `json:"context"`
	CreatedAt string  `json:"created_at"`
	MAC       []byte  `json:"mac"`
	Cursor    string  `json:"cursor"`
}

func orNull(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func cmdAuditExport(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cfg, err := config.Resolve(config.AuditExport, args, getenv, stderr, auditExportUsage)
	if err != nil {
		return err
	}
	log := newLogger(cfg.Log, stderr)
	cursor, err := readCursorFile(cfg.Tool.CursorFile)
	if err != nil {
		return err
	}
	store, closeStore, err := openToolStore(ctx, cfg, log, stderr)
	if err != nil {
		return err
	}
	defer closeStore()
	reader, ok := store.(broker.AuditRowReader)
	if !ok {
		return errors.New("this store cannot export its audit rows")
	}
	out := bufio.NewWriter(stdout)
	enc := json.NewEncoder(out)
	for {
		r := broker.AuditRange{From: time.Unix(0, 0), To: time.Now().Add(-broker.AuditSettle), After: cursor, Limit: auditExportBatch}
		if cursor != nil {
			r.From = cursor.CreatedAt
		}
		rows, err := reader.AuditRows(ctx, r)
		if err != nil {
			if ctx.Err() != nil {
				return nil // stopped (SIGTERM): what was written stands
			}
			return err
		}
		for _, e := range rows {
			cursor = &broker.AuditCursor{CreatedAt: e.CreatedAt, ID: e.ID}
			line := auditLine{ID: e.ID, UserID: e.UserID, Action: string(e.Action), Status: e.Status,
				IPAddress: orNull(e.IPAddress), UserAgent: orNull(e.UserAgent), Context: orNull(e.Context),
				CreatedAt: e.CreatedAt.UTC().Format(time.RFC3339Nano), MAC: e.MAC, Cursor: cursor.Encode()}
			if err := enc.Encode(line); err != nil {
				return err
			}
		}
		if len(rows) > 0 {
			if err := out.Flush(); err != nil {
				return err
			}
			if err := writeCursorFile(cfg.Tool.CursorFile, cursor); err != nil {
				return err
			}
		}
		if len(rows) == auditExportBatch {
			continue
		}
		if !cfg.Tool.Follow {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(auditExportPoll):
		}
	}
}

// readCursorFile returns the cursor path holds, nil when it does not
// exist (or no path is set).
func readCursorFile(path string) (*broker.AuditCursor, error) {
	if path == "" {
		return nil, nil
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	c, err := broker.ParseAuditCursor(strings.TrimSpace(string(b)))
	if err != nil {
		return nil, fmt.Errorf("%s does not hold an export cursor: %w", path, err)
	}
	return c, nil
}

// writeCursorFile replaces path with c, atomically: a crash leaves the
// old cursor or the new one.
func writeCursorFile(path string, c *broker.AuditCursor) error {
	if path == "" {
		return nil
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.WriteString(c.Encode() + "\n"); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
