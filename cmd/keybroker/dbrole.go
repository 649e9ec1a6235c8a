package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/keybroker/keybroker/cmd/keybroker/internal/config"
	"github.com/keybroker/keybroker/pgstore"
)

// checkDBRole refuses a database role that row-level security does not
// bind — a superuser, a role with BYPASSRLS, or a member of one — before
// anything touches the database: keybroker scopes every transaction to
// one user and the forced policies are what keeps a faulty query from
// reading or writing another user's rows, so with such a role one bug
// would expose everyone. Every command that opens the PostgreSQL store
// (serve, migrate, rewrap, kek status) calls it. With
// --allow-privileged-db-role it logs a warning instead.
func checkDBRole(ctx context.Context, pool *pgxpool.Pool, cfg config.Store, log *slog.Logger) error {
	err := pgstore.CheckRole(ctx, pool)
	var privileged *pgstore.PrivilegedRoleError
	if !errors.As(err, &privileged) {
		return err // nil, or the database cannot be reached
	}
	if cfg.AllowPrivileged {
		log.Warn("ROW-LEVEL SECURITY IS NOT ENFORCED: "+privileged.Error()+
			"; every query may read and write every user's rows. "+config.Name("allow-privileged-db-role")+" allows it: for tests only, never in production",
			slog.String("db_role", privileged.Role), slog.Bool("superuser", privileged.Superuser),
			slog.Bool("bypassrls", privileged.BypassRLS))
		return nil
	}
	return privilegedRoleRefusal(privileged)
}

// privilegedRoleRefusal is the error that stops the start: what is wrong
// and the SQL that makes the role keybroker should use instead.
func privilegedRoleRefusal(e *pgstore.PrivilegedRoleError) error {
	role, database := "keybroker", "keybroker"
	if e.SessionUser == role || e.CurrentUser == role || e.Role == role {
		// The privileged role already has the name (the old Compose
		// recipe's bootstrap superuser): suggest another.
		role = "keybroker_owner"
	}
	sql := e.PlainRoleSQL(role, database)
	return fmt.Errorf(`%w.
  keybroker scopes each transaction to one user and relies on the row-level security
  forced on its tables to keep any query away from other users' rows; this role ignores
  the policies. Run keybroker as a plain role that owns its tables. As a superuser, run:

%s

  then set %s to connect as %s (keep the password in a passfile).
  Tables a privileged role already made must change owner first:
  see "Moving to a plain database role" in deploy/README.md.
  For tests only, $%s=true (--allow-privileged-db-role) starts anyway
  and logs that row-level security is not enforced`,
		e, indent(sql, "    "), config.Name("database-url"), role, config.Env("allow-privileged-db-role"))
}

func indent(text, prefix string) string {
	return prefix + strings.ReplaceAll(text, "\n", "\n"+prefix)
}
