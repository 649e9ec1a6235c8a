package deploy

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestHelmChartRefuses: what would start an unsafe or broken keybroker
// fails rendering with a message naming the value, through the schema
// and again through the templates (helm install --skip-schema-validation).
func TestHelmChartRefuses(t *testing.T) {
	t.Parallel()
	base := chartDir + "/ci/secret-kek-values.yaml"
	cases := []struct {
		name     string
		files    []string
		set      map[string]any
		schema   string // in the error with the schema
		template string // in the error without it; "" renders
	}{
		{name: "NoValues", files: []string{},
			schema: "missing property 'jwksURL'", template: "jwt.jwksURL is required"},
		{name: "NoIssuer", set: map[string]any{"jwt": map[string]any{"issuer": ""}},
			schema: "/jwt/issuer", template: "jwt.issuer and jwt.audience are required"},
		{name: "NoAudience", set: map[string]any{"jwt": map[string]any{"audience": nil}},
			schema: "/jwt/audience", template: "jwt.issuer and jwt.audience are required"},
		{name: "NoDatabaseSecret", set: map[string]any{"database": map[string]any{"existingSecret": ""}},
			schema: "/database/existingSecret", template: "database.existingSecret is required"},
		{name: "NoKEKID", set: map[string]any{"kek": map[string]any{"id": ""}},
			schema: "/kek/id", template: "kek.id is required"},
		{name: "UnknownProvider", set: map[string]any{"kek": map[string]any{"provider": "file"}},
			schema: "/kek/provider", template: `kek.provider "file"`},
		{name: "NoKEKSecret", set: map[string]any{"kek": map[string]any{"secret": map[string]any{"existingSecret": ""}}},
			schema: "/kek/secret/existingSecret", template: "kek.secret.existingSecret is required"},
		{name: "AWSWithoutKey", set: map[string]any{"kek": map[string]any{"provider": "awsKMS"}},
			schema: "/kek/awsKMS/key", template: "kek.awsKMS.key is required"},
		{name: "GCPWithoutKey", set: map[string]any{"kek": map[string]any{"provider": "gcpKMS"}},
			schema: "/kek/gcpKMS/key", template: "kek.gcpKMS.key is required"},
		{name: "VaultWithoutAddress", set: map[string]any{"kek": map[string]any{"provider": "vaultTransit", "vaultTransit": map[string]any{"key": "k"}}},
			schema: "/kek/vaultTransit/address", template: "kek.vaultTransit.address are required"},
		{name: "IDAsParameter", set: map[string]any{"kek": map[string]any{"params": map[string]any{"id": "other"}}},
			schema: "", template: "set the KEK id in kek.id"},
		{name: "PlainDatabaseURL", set: map[string]any{"extraEnv": []any{map[string]any{"name": "DATABASE_URL", "value": "postgres://keybroker:hunter2@db/keybroker"}}},
			schema: "/extraEnv/0", template: "extraEnv DATABASE_URL"},
		{name: "PlainServiceKey", set: map[string]any{"extraEnv": []any{map[string]any{"name": "MANA_SERVICE_KEY", "value": "s3cr3t-s3cr3t-s3cr3t"}}},
			schema: "/extraEnv/0", template: "extraEnv MANA_SERVICE_KEY: a secret"},
		{name: "PrivilegedDatabaseRole", set: map[string]any{"settings": map[string]any{"KEYBROKER_ALLOW_PRIVILEGED_DB_ROLE": "true"}},
			schema: "", template: "settings.KEYBROKER_ALLOW_PRIVILEGED_DB_ROLE"},
		{name: "SettingOverridesTheKEK", set: map[string]any{"settings": map[string]any{"KEYBROKER_KEK": "env://OTHER?id=x"}},
			schema: "", template: "settings.KEYBROKER_KEK"},
		{name: "SettingNotKeybrokers", set: map[string]any{"settings": map[string]any{"HTTP_PROXY": "http://proxy"}},
			schema: "", template: "settings.HTTP_PROXY"},
		{name: "RootUser", set: map[string]any{"podSecurity": map[string]any{"runAsUser": 0}},
			schema: "/podSecurity/runAsUser", template: ""},
		{name: "MisspelledValue", set: map[string]any{"replicas": 5},
			schema: "replicas", template: ""},
		{name: "MetricsOnTheAPIPort", set: map[string]any{"metrics": map[string]any{"port": 3001}},
			schema: "", template: "metrics.port must differ from containerPort"},
		{name: "PDBBlocksDrains", set: map[string]any{"podDisruptionBudget": map[string]any{"minAvailable": 3}},
			schema: "", template: "podDisruptionBudget.minAvailable must be below replicaCount"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			files := tc.files
			if files == nil {
				files = []string{base}
			}
			for _, skip := range []bool{false, true} {
				want := tc.schema
				if skip || want == "" {
					want = tc.template
				}
				_, err := renderChart(t, renderOptions{valuesFiles: files, set: tc.set, skipSchemaValidation: skip})
				if want == "" {
					require.NoError(t, err, "skip schema validation: %v", skip)
					continue
				}
				require.Error(t, err, "skip schema validation: %v", skip)
				require.Contains(t, err.Error(), want, "skip schema validation: %v", skip)
			}
		})
	}

	t.Run("UnpinnedIsExplicit", func(t *testing.T) {
		t.Parallel()
		set := map[string]any{"jwt": map[string]any{"issuer": nil, "audience": nil, "unpinned": true}}
		objs := renderFile(t, base, set)
		env := envOf(t, objs.container(t))
		require.Equal(t, "true", env["KEYBROKER_JWT_UNPINNED"].Value)
		require.NotContains(t, env, "KEYBROKER_JWT_ISSUER")
	})
}

// TestHelmChartVariants renders what the ci files leave at their
// defaults, strictly decoded like them.
func TestHelmChartVariants(t *testing.T) {
	t.Parallel()
	gcp := chartDir + "/ci/gcp-kms-values.yaml"
	secret := chartDir + "/ci/secret-kek-values.yaml"

	t.Run("MetricsOnTheHTTPSListener", func(t *testing.T) {
		t.Parallel()
		objs := renderFile(t, gcp, map[string]any{
			"metrics": map[string]any{"port": 0},
			"serviceMonitor": map[string]any{"tlsConfig": map[string]any{
				"serverName": "keybroker.keybroker.svc",
				"ca":         map[string]any{"secret": map[string]any{"name": "keybroker-tls", "key": "ca.crt"}},
			}},
		})
		require.Len(t, objs.Services, 1, "no metrics Service without a metrics listener")
		require.NotContains(t, envOf(t, objs.container(t)), "KEYBROKER_METRICS_ADDR")
		ep := objs.ServiceMonitor.Spec.Endpoints[0]
		require.Equal(t, "http", ep.Port)
		require.Equal(t, "https", strings.ToLower(string(ptrValue(ep.Scheme))))
		require.NotNil(t, ep.TLSConfig)
		require.Equal(t, "keybroker.keybroker.svc", ptrValue(ep.TLSConfig.ServerName))
		require.Equal(t, "api", objs.ServiceMonitor.Spec.Selector.MatchLabels["app.kubernetes.io/component"])
	})

	t.Run("ExistingServiceAccountAndDigest", func(t *testing.T) {
		t.Parallel()
		digest := "sha256:" + strings.Repeat("ab", 32)
		objs := renderFile(t, gcp, map[string]any{
			"serviceAccount": map[string]any{"create": false, "name": "keybroker-wi"},
			"image":          map[string]any{"digest": digest},
		})
		require.Nil(t, objs.ServiceAccount)
		require.Equal(t, "keybroker-wi", objs.Deployment.Spec.Template.Spec.ServiceAccountName)
		require.Equal(t, "ghcr.io/example/keybroker@"+digest, objs.container(t).Image)
		_, err := renderChart(t, renderOptions{valuesFiles: []string{gcp}, set: map[string]any{"serviceAccount": map[string]any{"create": false}}})
		require.ErrorContains(t, err, "serviceAccount.name")
	})

	t.Run("RotationAndMinAvailable", func(t *testing.T) {
		t.Parallel()
		objs := renderFile(t, secret, map[string]any{
			"kek": map[string]any{
				"id":      "env-2027",
				"secret":  map[string]any{"variable": "KEK_2027", "existingSecret": "keybroker-kek-2027"},
				"retired": []any{"env://MANA_AUTH_KEK?id=env-v1"},
			},
			"extraEnv": []any{map[string]any{"name": "MANA_AUTH_KEK", "valueFrom": map[string]any{
				"secretKeyRef": map[string]any{"name": "keybroker-kek", "key": "kek"}}}},
			"podDisruptionBudget": map[string]any{"minAvailable": 2},
		})
		env := envOf(t, objs.container(t))
		require.Equal(t, "env://KEK_2027?id=env-2027", env["KEYBROKER_KEK"].Value)
		require.Equal(t, "env://MANA_AUTH_KEK?id=env-v1", env["KEYBROKER_KEK_RETIRED"].Value)
		require.Equal(t, "keybroker-kek-2027", env["KEK_2027"].ValueFrom.SecretKeyRef.Name)
		require.Equal(t, "keybroker-kek", env["MANA_AUTH_KEK"].ValueFrom.SecretKeyRef.Name)
		require.Equal(t, 2, objs.PDB.Spec.MinAvailable.IntValue())
		require.Nil(t, objs.PDB.Spec.MaxUnavailable)
	})
}

// TestHelmChartKubernetesVersions: before 1.30 the preStop sleep action
// does not exist and is left out; the rest renders the same.
func TestHelmChartKubernetesVersions(t *testing.T) {
	t.Parallel()
	file := chartDir + "/ci/aws-kms-values.yaml"
	for version, preStop := range map[string]bool{"v1.29.4": false, "v1.30.0": true, "v1.33.1-eks-1234": true} {
		manifests, err := renderChart(t, renderOptions{valuesFiles: []string{file}, kubeVersion: version})
		require.NoError(t, err)
		c := decodeChart(t, manifests).container(t)
		require.Equal(t, preStop, c.Lifecycle != nil, version)
	}
}

// TestHelmChartFilesArePackaged: the chart directory holds what helm
// package would ship, and nothing stray (a values file with a secret, an
// editor's backup).
func TestHelmChartFilesArePackaged(t *testing.T) {
	t.Parallel()
	allowed := regexp.MustCompile(`^(Chart\.yaml|values\.yaml|values\.schema\.json|\.helmignore|templates/[a-z_]+\.(yaml|tpl|txt)|templates/NOTES\.txt|ci/[a-z0-9-]+-values\.yaml)$`)
	err := filepath.WalkDir(chartDir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, err := filepath.Rel(chartDir, p)
		if err != nil {
			return err
		}
		if !allowed.MatchString(filepath.ToSlash(rel)) {
			return fmt.Errorf("unexpected file %s in the chart", rel)
		}
		return nil
	})
	require.NoError(t, err)
	_, err = os.Stat(chartDir + "/Chart.lock")
	require.True(t, errors.Is(err, fs.ErrNotExist), "the chart has no dependencies")
}
