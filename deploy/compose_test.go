package deploy

import (
	"context"
	"maps"
	"net/url"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/kekproviders"
	"github.com/keybroker/keybroker/kekproviders/docker"
)

// imageBinary is where the Dockerfile puts keybroker in the image.
const imageBinary = "/usr/local/bin/keybroker"

// loadCompose loads compose.yaml the way `docker compose config` does,
// with .env.example standing in for the operator's .env and nothing from
// this process's environment.
func loadCompose(t *testing.T, envFiles ...string) (*types.Project, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	opts, err := cli.NewProjectOptions([]string{"compose/compose.yaml"},
		cli.WithWorkingDirectory("compose"),
		cli.WithEnvFiles(envFiles...),
		cli.WithDotEnv,
	)
	require.NoError(t, err)
	return opts.LoadProject(ctx)
}

func TestCompose(t *testing.T) {
	t.Parallel()
	project, err := loadCompose(t, "compose/.env.example")
	require.NoError(t, err)
	kb, err := project.GetService("keybroker")
	require.NoError(t, err)
	pg, err := project.GetService("postgres")
	require.NoError(t, err)

	t.Run("KEKIsADockerSecret", func(t *testing.T) {
		uri := kb.Environment["KEYBROKER_KEK"]
		require.NotNil(t, uri)
		p, err := kekproviders.ParseURI(*uri)
		require.NoError(t, err)
		require.Equal(t, kekproviders.SchemeDockerSecret, p.Scheme)
		require.Equal(t, "kek-2026", p.ID, "the id comes from .env")
		name := strings.TrimPrefix(p.URL.Host+p.URL.Path, "/")
		// The secret the URI names is mounted into keybroker under that
		// file name, and declared as a file.
		var mounted *types.ServiceSecretConfig
		for i, s := range kb.Secrets {
			target := s.Target
			if target == "" {
				target = s.Source
			}
			if !path.IsAbs(target) {
				target = path.Join(docker.DefaultDirectory, target)
			}
			if target == path.Join(docker.DefaultDirectory, name) {
				mounted = &kb.Secrets[i]
			}
		}
		require.NotNil(t, mounted, "keybroker does not mount secret %q", name)
		decl, ok := project.Secrets[mounted.Source]
		require.True(t, ok, "secret %q is not declared", mounted.Source)
		require.NotEmpty(t, decl.File, "secret %q should be a file", mounted.Source)
		require.Empty(t, decl.Environment, "a secret taken from an environment variable is the environment again")
		// Only keybroker sees the KEK.
		for _, other := range project.Services {
			if other.Name == kb.Name {
				continue
			}
			for _, s := range other.Secrets {
				require.NotEqual(t, mounted.Source, s.Source, "%s mounts the KEK", other.Name)
			}
		}
	})

	t.Run("NoKeyMaterialInTheEnvironment", func(t *testing.T) {
		for _, svc := range project.Services {
			require.Empty(t, svc.EnvFiles, "%s: env_file would carry settings past this check", svc.Name)
			for k, v := range svc.Environment {
				require.NotEqual(t, kekproviders.LegacyVariable, k, "%s: the KEK as an environment variable", svc.Name)
				require.NotEqual(t, "POSTGRES_PASSWORD", k, "%s: use POSTGRES_PASSWORD_FILE", svc.Name)
				if v != nil {
					require.False(t, looksLikeKey(*v), "%s: key material in %s", svc.Name, k)
				}
			}
		}
		noPassword(t, *kb.Environment["DATABASE_URL"])
		env, commented := parseEnvFile(t, "compose/.env.example")
		require.NotContains(t, env, kekproviders.LegacyVariable)
		require.NotContains(t, env, "KEYBROKER_KEK")
		for k, v := range env {
			require.False(t, looksLikeKey(v), ".env.example: key material in %s", k)
		}
		for _, line := range commented {
			if k, v, ok := strings.Cut(line, "="); ok && !strings.Contains(k, " ") {
				require.False(t, looksLikeKey(v), ".env.example: key material in a commented %s", k)
			}
		}
	})

	t.Run("KeybrokerConnectsAsAPlainRole", func(t *testing.T) {
		// keybroker's URL names the role and database the initdb script
		// makes, never the bootstrap superuser.
		db, err := url.Parse(*kb.Environment["DATABASE_URL"])
		require.NoError(t, err)
		superuser := *pg.Environment["POSTGRES_USER"]
		require.NotEmpty(t, superuser)
		require.NotEqual(t, superuser, db.User.Username(), "keybroker connects as the bootstrap superuser")
		require.Equal(t, *pg.Environment["KEYBROKER_DB_USER"], db.User.Username())
		require.Equal(t, "/"+*pg.Environment["KEYBROKER_DB_NAME"], db.Path)
		if name := pg.Environment["POSTGRES_DB"]; name != nil {
			// The image would create it, owned by the superuser, before
			// the script runs.
			require.NotEqual(t, *pg.Environment["KEYBROKER_DB_NAME"], *name)
		}
		require.NotContains(t, kb.Environment, "KEYBROKER_ALLOW_PRIVILEGED_DB_ROLE")

		// The initdb scripts: mounted read-only, executable, in the image's
		// directory.
		var initdb *types.ServiceVolumeConfig
		for i, v := range pg.Volumes {
			if v.Target == "/docker-entrypoint-initdb.d" {
				initdb = &pg.Volumes[i]
			}
		}
		require.NotNil(t, initdb, "no initdb scripts mounted")
		require.Equal(t, types.VolumeTypeBind, initdb.Type)
		require.True(t, initdb.ReadOnly)
		scripts, err := filepath.Glob(filepath.Join(initdb.Source, "*.sh"))
		require.NoError(t, err)
		require.NotEmpty(t, scripts)
		for _, s := range scripts {
			info, err := os.Stat(s)
			require.NoError(t, err)
			require.NotZero(t, info.Mode().Perm()&0o111, "%s is not executable: the image would source it into its entrypoint", s)
		}

		// Secrets: each container gets only its own. The superuser's
		// password and the role's password file stay in postgres; the
		// pgpass file that keybroker's URL names is keybroker's.
		mounted := func(svc types.ServiceConfig) []string {
			var names []string
			for _, s := range svc.Secrets {
				names = append(names, s.Source)
			}
			return names
		}
		require.Equal(t, "/run/secrets/keybroker_db_password", *pg.Environment["KEYBROKER_DB_PASSWORD_FILE"])
		require.Contains(t, mounted(pg), "keybroker_db_password")
		require.Contains(t, mounted(pg), "postgres_password")
		require.NotContains(t, mounted(kb), "postgres_password")
		require.NotContains(t, mounted(kb), "keybroker_db_password")
		require.NotContains(t, mounted(pg), "pgpass")
		require.Equal(t, "/run/secrets/pgpass", db.Query().Get("passfile"))
		require.Contains(t, mounted(kb), "pgpass")
	})

	t.Run("RequiredSettingsFailLoudly", func(t *testing.T) {
		// Without .env, compose refuses to render rather than start a
		// broker with an empty KEK id or no token issuer.
		_, err := loadCompose(t, "/dev/null")
		require.ErrorContains(t, err, "KEYBROKER_KEK_ID")
	})

	t.Run("HealthChecksProbeRealEndpoints", func(t *testing.T) {
		require.NotNil(t, kb.HealthCheck)
		test := []string(kb.HealthCheck.Test)
		// Exec form, the image's binary (no shell in the image), and no
		// URL: it follows the service's KEYBROKER_ADDR and TLS settings
		// as serve does, so adding TLS does not break it.
		require.Equal(t, []string{"CMD", imageBinary, "healthcheck"}, test)
		require.Equal(t, ":3001", *kb.Environment["KEYBROKER_ADDR"])

		require.NotNil(t, pg.HealthCheck)
		require.Equal(t, "CMD", pg.HealthCheck.Test[0])
		require.Equal(t, "pg_isready", pg.HealthCheck.Test[1])
		dep, ok := kb.DependsOn["postgres"]
		require.True(t, ok)
		require.Equal(t, types.ServiceConditionHealthy, dep.Condition)
	})

	t.Run("PostgresDataOnANamedVolume", func(t *testing.T) {
		var data *types.ServiceVolumeConfig
		for i, v := range pg.Volumes {
			if v.Target == "/var/lib/postgresql/data" {
				data = &pg.Volumes[i]
			}
		}
		require.NotNil(t, data)
		require.Equal(t, types.VolumeTypeVolume, data.Type)
		_, declared := project.Volumes[data.Source]
		require.True(t, declared, "volume %q is not a declared named volume", data.Source)
		require.Equal(t, "/run/secrets/postgres_password", *pg.Environment["POSTGRES_PASSWORD_FILE"])
	})

	t.Run("RestartPolicy", func(t *testing.T) {
		for _, svc := range project.Services {
			require.Contains(t, []string{"always", "unless-stopped"}, svc.Restart, svc.Name)
		}
	})

	t.Run("KeybrokerIsNotRoot", func(t *testing.T) {
		uid, _, _ := strings.Cut(kb.User, ":")
		require.NotEmpty(t, uid)
		require.NotContains(t, []string{"0", "root"}, uid)
		require.True(t, kb.ReadOnly, "read-only root filesystem")
		require.Equal(t, []string{"ALL"}, kb.CapDrop)
		require.Contains(t, kb.SecurityOpt, "no-new-privileges:true")
		require.Equal(t, "production", *kb.Environment["KEYBROKER_ENV"])
	})

	t.Run("ExposedOnLoopbackOnly", func(t *testing.T) {
		require.Len(t, kb.Ports, 1)
		require.Equal(t, "127.0.0.1", kb.Ports[0].HostIP)
		require.Empty(t, pg.Ports, "PostgreSQL is not published")
		require.True(t, project.Networks["backend"].Internal)
		require.Equal(t, []string{"backend"}, slices.Collect(maps.Keys(pg.Networks)))
	})
}

// TestDockerComposeConfig asks the real compose plugin, when there is one.
func TestDockerComposeConfig(t *testing.T) {
	t.Parallel()
	docker, err := exec.LookPath("docker")
	if err != nil || exec.Command(docker, "compose", "version").Run() != nil {
		t.Skip("SKIPPED LOUDLY: no `docker compose` on this machine; compose.yaml was checked with compose-go only")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, docker, "compose", "--env-file", ".env.example", "-f", "compose.yaml", "config", "--quiet")
	cmd.Dir = "compose"
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "%s", out)
}
