package deploy

import (
	"testing"

	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
)

// chartOptionalVariables are the variables the chart sets from audit.*,
// rollout.* and grants.*, and only when those are set.
var chartOptionalVariables = []string{
	"KEYBROKER_AUDIT_RETENTION", "KEYBROKER_AUDIT_SEAL_INTERVAL",
	"KEYBROKER_ROLLOUT_HEARTBEAT", "KEYBROKER_ROLLOUT_REPLICAS",
	"MANA_AI_PUBLIC_KEY_PEM", "KEYBROKER_GRANT_RECIPIENTS",
}

// TestHelmChartOptionalSettingsDefaults: left at their defaults, the
// audit, rollout and grants values add no variable and no volume, so an
// existing install renders as before.
func TestHelmChartOptionalSettingsDefaults(t *testing.T) {
	t.Parallel()
	for _, file := range ciValuesFiles(t) {
		objs := renderFile(t, file, nil)
		env := envOf(t, objs.container(t))
		for _, name := range chartOptionalVariables {
			require.NotContains(t, env, name, file)
		}
		for _, v := range objs.Deployment.Spec.Template.Spec.Volumes {
			require.NotEqual(t, "grant-recipients", v.Name, file)
		}
	}
}

// TestHelmChartOptionalSettings: the audit, rollout and grants values land
// in the Deployment's environment and volumes, strictly decoded.
func TestHelmChartOptionalSettings(t *testing.T) {
	t.Parallel()
	base := chartDir + "/ci/secret-kek-values.yaml"
	set := map[string]any{
		"replicaCount": 4,
		"audit":        map[string]any{"retention": "400d", "sealInterval": "30s"},
		"rollout":      map[string]any{"heartbeat": "5s", "replicas": "replicaCount"},
		"grants": map[string]any{
			"defaultKey": map[string]any{"configMapName": "keybroker-grant-keys", "key": "mana-ai.pem"},
			"recipients": []any{
				map[string]any{"name": "worker-eu", "configMapName": "keybroker-grant-keys", "key": "eu.pem"},
				map[string]any{"name": "worker-us", "secretName": "keybroker-grant-us", "key": "public-key.pem"},
			},
		},
	}

	t.Run("Rendered", func(t *testing.T) {
		t.Parallel()
		objs := renderFile(t, base, set)
		c := objs.container(t)
		env := envOf(t, c)
		require.Equal(t, "400d", env["KEYBROKER_AUDIT_RETENTION"].Value)
		require.Equal(t, "30s", env["KEYBROKER_AUDIT_SEAL_INTERVAL"].Value)
		require.Equal(t, "5s", env["KEYBROKER_ROLLOUT_HEARTBEAT"].Value)
		require.Equal(t, "4", env["KEYBROKER_ROLLOUT_REPLICAS"].Value, "replicaCount stands for the chart's replica count")

		pem := env["MANA_AI_PUBLIC_KEY_PEM"]
		require.Empty(t, pem.Value)
		require.NotNil(t, pem.ValueFrom)
		require.NotNil(t, pem.ValueFrom.ConfigMapKeyRef)
		require.Equal(t, "keybroker-grant-keys", pem.ValueFrom.ConfigMapKeyRef.Name)
		require.Equal(t, "mana-ai.pem", pem.ValueFrom.ConfigMapKeyRef.Key)

		require.Equal(t,
			"worker-eu=/etc/keybroker/grant-recipients/worker-eu.pem worker-us=/etc/keybroker/grant-recipients/worker-us.pem",
			env["KEYBROKER_GRANT_RECIPIENTS"].Value)
		var mount *corev1.VolumeMount
		for i, m := range c.VolumeMounts {
			if m.Name == "grant-recipients" {
				mount = &c.VolumeMounts[i]
			}
		}
		require.NotNil(t, mount)
		require.Equal(t, "/etc/keybroker/grant-recipients", mount.MountPath)
		require.True(t, mount.ReadOnly)
		var vol *corev1.Volume
		for i, v := range objs.Deployment.Spec.Template.Spec.Volumes {
			if v.Name == "grant-recipients" {
				vol = &objs.Deployment.Spec.Template.Spec.Volumes[i]
			}
		}
		require.NotNil(t, vol)
		require.NotNil(t, vol.Projected)
		srcs := vol.Projected.Sources
		require.Len(t, srcs, 2)
		require.NotNil(t, srcs[0].ConfigMap)
		require.Equal(t, "keybroker-grant-keys", srcs[0].ConfigMap.Name)
		require.Equal(t, []corev1.KeyToPath{{Key: "eu.pem", Path: "worker-eu.pem"}}, srcs[0].ConfigMap.Items)
		require.NotNil(t, srcs[1].Secret)
		require.Equal(t, "keybroker-grant-us", srcs[1].Secret.Name)
		require.Equal(t, []corev1.KeyToPath{{Key: "public-key.pem", Path: "worker-us.pem"}}, srcs[1].Secret.Items)
	})

	t.Run("ReplicasAsNumberAndKeyFromSecret", func(t *testing.T) {
		t.Parallel()
		objs := renderFile(t, base, map[string]any{
			"rollout": map[string]any{"replicas": 7},
			"grants":  map[string]any{"defaultKey": map[string]any{"secretName": "mana-ai-key"}},
		})
		env := envOf(t, objs.container(t))
		require.Equal(t, "7", env["KEYBROKER_ROLLOUT_REPLICAS"].Value)
		require.NotContains(t, env, "KEYBROKER_AUDIT_RETENTION")
		ref := env["MANA_AI_PUBLIC_KEY_PEM"].ValueFrom.SecretKeyRef
		require.NotNil(t, ref)
		require.Equal(t, "mana-ai-key", ref.Name)
		require.Equal(t, "public-key.pem", ref.Key)
	})

	t.Run("RetentionAsTheNumberZero", func(t *testing.T) {
		t.Parallel()
		// YAML's retention: 0 is a number: keybroker's default, keep every
		// row, as "0" is; the chart sets nothing for it.
		objs := renderFile(t, base, map[string]any{"audit": map[string]any{"retention": 0}})
		require.NotContains(t, envOf(t, objs.container(t)), "KEYBROKER_AUDIT_RETENTION")
	})

	t.Run("Refused", func(t *testing.T) {
		t.Parallel()
		cases := map[string]struct {
			set    map[string]any
			schema string // "" when only the templates refuse it
			want   string
		}{
			"AlsoInSettings": {
				set:  map[string]any{"audit": map[string]any{"retention": "30d"}, "settings": map[string]any{"KEYBROKER_AUDIT_RETENTION": "60d"}},
				want: "settings.KEYBROKER_AUDIT_RETENTION: the chart sets it",
			},
			"AlsoInExtraEnv": {
				set: map[string]any{"rollout": map[string]any{"heartbeat": "5s"},
					"extraEnv": []any{map[string]any{"name": "KEYBROKER_ROLLOUT_HEARTBEAT", "value": "0"}}},
				want: "extraEnv KEYBROKER_ROLLOUT_HEARTBEAT: the chart sets it",
			},
			"RecipientWithoutSource": {
				set:  map[string]any{"grants": map[string]any{"recipients": []any{map[string]any{"name": "w", "key": "k"}}}},
				want: "grants.recipients w: set exactly one of secretName and configMapName",
			},
			"RecipientBadName": {
				set:    map[string]any{"grants": map[string]any{"recipients": []any{map[string]any{"name": "Worker/EU", "configMapName": "c", "key": "k"}}}},
				schema: "/grants/recipients/0/name",
				want:   `grants.recipients: name "Worker/EU"`,
			},
			"RetentionWithoutUnit": {
				set:    map[string]any{"audit": map[string]any{"retention": 400}},
				schema: "/audit/retention",
				want:   `audit.retention 400: a duration with its unit`,
			},
			"ReplicasWord": {
				set:    map[string]any{"rollout": map[string]any{"replicas": "all"}},
				schema: "/rollout/replicas",
				want:   `rollout.replicas "all"`,
			},
		}
		for name, tc := range cases {
			for _, skip := range []bool{false, true} {
				want := tc.want
				if !skip && tc.schema != "" {
					want = tc.schema
				}
				_, err := renderChart(t, renderOptions{valuesFiles: []string{base}, set: tc.set, skipSchemaValidation: skip})
				require.ErrorContains(t, err, want, "%s, skip schema validation: %v", name, skip)
			}
		}
	})

	t.Run("PreviouslyInSettings", func(t *testing.T) {
		t.Parallel()
		// An install that passed them through settings keeps rendering.
		objs := renderFile(t, base, map[string]any{"settings": map[string]any{"KEYBROKER_AUDIT_RETENTION": "400d", "KEYBROKER_ROLLOUT_REPLICAS": "3"}})
		env := envOf(t, objs.container(t))
		require.Equal(t, "400d", env["KEYBROKER_AUDIT_RETENTION"].Value)
		require.Equal(t, "3", env["KEYBROKER_ROLLOUT_REPLICAS"].Value)
	})
}
