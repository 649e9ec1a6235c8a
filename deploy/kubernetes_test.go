package deploy

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"
	releaseutil "helm.sh/helm/v4/pkg/release/v1/util"

	"github.com/keybroker/keybroker/kekproviders"
)

// The parts of the Kubernetes objects the invariants are about; other
// fields are ignored. No Kubernetes client libraries: the manifests are
// checked as the YAML they are.
type (
	k8sMeta struct {
		Name        string            `yaml:"name"`
		Namespace   string            `yaml:"namespace"`
		Labels      map[string]string `yaml:"labels"`
		Annotations map[string]string `yaml:"annotations"`
	}
	k8sObject struct {
		APIVersion string  `yaml:"apiVersion"`
		Kind       string  `yaml:"kind"`
		Metadata   k8sMeta `yaml:"metadata"`
		file       string
		raw        yaml.Node
	}
	labelSelector struct {
		MatchLabels map[string]string `yaml:"matchLabels"`
	}
	securityContext struct {
		RunAsNonRoot             *bool  `yaml:"runAsNonRoot"`
		RunAsUser                *int64 `yaml:"runAsUser"`
		ReadOnlyRootFilesystem   *bool  `yaml:"readOnlyRootFilesystem"`
		AllowPrivilegeEscalation *bool  `yaml:"allowPrivilegeEscalation"`
		Privileged               *bool  `yaml:"privileged"`
		Capabilities             struct {
			Drop []string `yaml:"drop"`
			Add  []string `yaml:"add"`
		} `yaml:"capabilities"`
		SeccompProfile struct {
			Type string `yaml:"type"`
		} `yaml:"seccompProfile"`
	}
	probe struct {
		HTTPGet *struct {
			Path string `yaml:"path"`
			Port any    `yaml:"port"`
		} `yaml:"httpGet"`
	}
	envVar struct {
		Name      string `yaml:"name"`
		Value     string `yaml:"value"`
		ValueFrom *struct {
			SecretKeyRef *struct {
				Name string `yaml:"name"`
				Key  string `yaml:"key"`
			} `yaml:"secretKeyRef"`
		} `yaml:"valueFrom"`
	}
	container struct {
		Name  string `yaml:"name"`
		Image string `yaml:"image"`
		Ports []struct {
			Name          string `yaml:"name"`
			ContainerPort int    `yaml:"containerPort"`
		} `yaml:"ports"`
		Env             []envVar        `yaml:"env"`
		EnvFrom         []any           `yaml:"envFrom"`
		ReadinessProbe  *probe          `yaml:"readinessProbe"`
		LivenessProbe   *probe          `yaml:"livenessProbe"`
		StartupProbe    *probe          `yaml:"startupProbe"`
		SecurityContext securityContext `yaml:"securityContext"`
	}
	deployment struct {
		Spec struct {
			Replicas *int          `yaml:"replicas"`
			Selector labelSelector `yaml:"selector"`
			Template struct {
				Metadata k8sMeta `yaml:"metadata"`
				Spec     struct {
					ServiceAccountName           string          `yaml:"serviceAccountName"`
					AutomountServiceAccountToken *bool           `yaml:"automountServiceAccountToken"`
					SecurityContext              securityContext `yaml:"securityContext"`
					Containers                   []container     `yaml:"containers"`
					Volumes                      []any           `yaml:"volumes"`
				} `yaml:"spec"`
			} `yaml:"template"`
		} `yaml:"spec"`
	}
	service struct {
		Spec struct {
			Selector map[string]string `yaml:"selector"`
			Ports    []struct {
				Port       int `yaml:"port"`
				TargetPort any `yaml:"targetPort"`
			} `yaml:"ports"`
		} `yaml:"spec"`
	}
	podDisruptionBudget struct {
		Spec struct {
			MinAvailable   *int          `yaml:"minAvailable"`
			MaxUnavailable *int          `yaml:"maxUnavailable"`
			Selector       labelSelector `yaml:"selector"`
		} `yaml:"spec"`
	}
)

// loadManifests decodes every YAML document under deploy/kubernetes.
func loadManifests(t *testing.T) map[string][]k8sObject {
	t.Helper()
	files, err := filepath.Glob("kubernetes/*.yaml")
	require.NoError(t, err)
	require.NotEmpty(t, files)
	byKind := map[string][]k8sObject{}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		require.NoError(t, err)
		dec := yaml.NewDecoder(bytes.NewReader(raw))
		for {
			var node yaml.Node
			if err := dec.Decode(&node); errors.Is(err, io.EOF) {
				break
			} else {
				require.NoError(t, err, f)
			}
			var obj k8sObject
			require.NoError(t, node.Decode(&obj), f)
			require.NotEmpty(t, obj.Kind, "%s: a document without kind", f)
			obj.file, obj.raw = f, node
			byKind[obj.Kind] = append(byKind[obj.Kind], obj)
		}
	}
	return byKind
}

// one returns the only object of kind, decoded into out.
func one[T any](t *testing.T, objs map[string][]k8sObject, kind string) (k8sObject, T) {
	t.Helper()
	require.Len(t, objs[kind], 1, kind)
	var out T
	require.NoError(t, objs[kind][0].raw.Decode(&out))
	return objs[kind][0], out
}

func TestKubernetesManifests(t *testing.T) {
	t.Parallel()
	objs := loadManifests(t)
	depObj, dep := one[deployment](t, objs, "Deployment")
	saObj, _ := one[struct{}](t, objs, "ServiceAccount")
	_, svc := one[service](t, objs, "Service")
	_, pdb := one[podDisruptionBudget](t, objs, "PodDisruptionBudget")
	pod := dep.Spec.Template.Spec
	require.Len(t, pod.Containers, 1)
	c := pod.Containers[0]
	podLabels := dep.Spec.Template.Metadata.Labels

	t.Run("Namespace", func(t *testing.T) {
		_, ns := one[struct{ Metadata k8sMeta }](t, objs, "Namespace")
		require.Equal(t, "restricted", ns.Metadata.Labels["pod-security.kubernetes.io/enforce"])
		for kind, list := range objs {
			for _, o := range list {
				if kind != "Namespace" && kind != "Kustomization" {
					require.Equal(t, ns.Metadata.Name, o.Metadata.Namespace, "%s %s", kind, o.Metadata.Name)
				}
			}
		}
	})

	t.Run("ThreeReplicasAndSelectors", func(t *testing.T) {
		require.NotNil(t, dep.Spec.Replicas)
		require.Equal(t, 3, *dep.Spec.Replicas)
		require.NotEmpty(t, dep.Spec.Selector.MatchLabels)
		requireSubset(t, dep.Spec.Selector.MatchLabels, podLabels, "Deployment selector")
		requireSubset(t, svc.Spec.Selector, podLabels, "Service selector")
		requireSubset(t, pdb.Spec.Selector.MatchLabels, podLabels, "PodDisruptionBudget selector")
	})

	t.Run("PodDisruptionBudgetKeepsAQuorum", func(t *testing.T) {
		require.NotNil(t, pdb.Spec.MinAvailable)
		require.GreaterOrEqual(t, *pdb.Spec.MinAvailable, 2)
		require.Less(t, *pdb.Spec.MinAvailable, *dep.Spec.Replicas, "a PDB equal to replicas blocks every drain")
	})

	t.Run("ProbesPointAtHealthEndpoints", func(t *testing.T) {
		portNames := map[string]int{}
		for _, p := range c.Ports {
			portNames[p.Name] = p.ContainerPort
		}
		for name, p := range map[string]*probe{"readiness": c.ReadinessProbe, "liveness": c.LivenessProbe} {
			require.NotNil(t, p, name)
			require.NotNil(t, p.HTTPGet, name)
			port, ok := p.HTTPGet.Port.(string)
			require.True(t, ok, "%s probe: name the port", name)
			require.Contains(t, portNames, port, "%s probe port", name)
		}
		require.Equal(t, "/readyz", c.ReadinessProbe.HTTPGet.Path)
		require.Equal(t, "/healthz", c.LivenessProbe.HTTPGet.Path)
		require.Equal(t, svc.Spec.Ports[0].TargetPort, c.ReadinessProbe.HTTPGet.Port, "the Service targets the probed port")
		for _, e := range c.Env {
			if e.Name == "KEYBROKER_ADDR" {
				require.Equal(t, e.Value, ":"+strconv.Itoa(portNames["http"]))
			}
		}
	})

	t.Run("SecurityContext", func(t *testing.T) {
		for name, sc := range map[string]securityContext{"pod": pod.SecurityContext, "container": c.SecurityContext} {
			require.NotNil(t, sc.RunAsNonRoot, name)
			require.True(t, *sc.RunAsNonRoot, name)
			require.Equal(t, "RuntimeDefault", sc.SeccompProfile.Type, name)
			if sc.RunAsUser != nil {
				require.NotZero(t, *sc.RunAsUser, name)
			}
		}
		sc := c.SecurityContext
		require.NotNil(t, sc.ReadOnlyRootFilesystem)
		require.True(t, *sc.ReadOnlyRootFilesystem)
		require.NotNil(t, sc.AllowPrivilegeEscalation)
		require.False(t, *sc.AllowPrivilegeEscalation)
		require.Equal(t, []string{"ALL"}, sc.Capabilities.Drop)
		require.Empty(t, sc.Capabilities.Add)
		require.True(t, sc.Privileged == nil || !*sc.Privileged)
	})

	t.Run("ServiceAccountForIRSAAndWorkloadIdentity", func(t *testing.T) {
		require.Equal(t, saObj.Metadata.Name, pod.ServiceAccountName)
		require.True(t, strings.HasPrefix(saObj.Metadata.Annotations["eks.amazonaws.com/role-arn"], "arn:aws:iam::"))
		require.True(t, strings.HasSuffix(saObj.Metadata.Annotations["iam.gke.io/gcp-service-account"], ".iam.gserviceaccount.com"))
		require.NotNil(t, pod.AutomountServiceAccountToken)
		require.False(t, *pod.AutomountServiceAccountToken, "keybroker never calls the Kubernetes API")
	})

	t.Run("KEKInAKMSAndNoSecretsInTheManifests", func(t *testing.T) {
		require.Empty(t, objs["Secret"], "secrets are created by the operator, not committed")
		require.Empty(t, c.EnvFrom)
		env := map[string]envVar{}
		for _, e := range c.Env {
			env[e.Name] = e
			require.NotEqual(t, kekproviders.LegacyVariable, e.Name)
			require.False(t, looksLikeKey(e.Value), "key material in %s", e.Name)
		}
		p, err := kekproviders.ParseURI(env["KEYBROKER_KEK"].Value)
		require.NoError(t, err)
		require.Contains(t, []string{kekproviders.SchemeAWSKMS, kekproviders.SchemeGCPKMS}, p.Scheme)
		require.Equal(t, "production", env["KEYBROKER_ENV"].Value)
		db := env["DATABASE_URL"]
		require.Empty(t, db.Value, "the database URL carries a password: take it from a Secret")
		require.NotNil(t, db.ValueFrom)
		require.NotNil(t, db.ValueFrom.SecretKeyRef)
	})

	t.Run("KustomizationListsEveryManifest", func(t *testing.T) {
		raw, err := os.ReadFile("kubernetes/kustomization.yaml")
		require.NoError(t, err)
		var k struct {
			Resources []string `yaml:"resources"`
		}
		require.NoError(t, yaml.Unmarshal(raw, &k))
		files, err := filepath.Glob("kubernetes/*.yaml")
		require.NoError(t, err)
		for _, f := range files {
			if base := filepath.Base(f); base != "kustomization.yaml" {
				require.Contains(t, k.Resources, base)
			}
		}
		require.Equal(t, depObj.Metadata.Namespace, namespaceOf(t, raw))
	})
}

func namespaceOf(t *testing.T, kustomization []byte) string {
	t.Helper()
	var k struct {
		Namespace string `yaml:"namespace"`
	}
	require.NoError(t, yaml.Unmarshal(kustomization, &k))
	return k.Namespace
}

func requireSubset(t *testing.T, selector, labels map[string]string, what string) {
	t.Helper()
	require.NotEmpty(t, selector, what)
	for k, v := range selector {
		require.Equal(t, v, labels[k], "%s: %s", what, k)
	}
}

// TestKubernetesManifestsDecodeStrictly decodes the kustomize manifests
// with the chart's strict decoder: the invariants TestKubernetesManifests
// checks are read from fields that exist, spelled as the API spells them.
func TestKubernetesManifestsDecodeStrictly(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob("kubernetes/*.yaml")
	require.NoError(t, err)
	kinds := map[string]int{}
	for _, f := range files {
		if filepath.Base(f) == "kustomization.yaml" {
			continue // kustomize's own configuration, not an API object
		}
		raw, err := os.ReadFile(f)
		require.NoError(t, err)
		for _, doc := range releaseutil.SplitManifests(string(raw)) {
			if strings.TrimSpace(stripComments(doc)) == "" {
				continue
			}
			_, gvk, err := chartDecoder.Decode([]byte(doc), nil, nil)
			require.NoError(t, err, "%s does not decode strictly", f)
			kinds[gvk.Kind]++
		}
	}
	for _, kind := range []string{"Namespace", "Deployment", "Service", "ServiceAccount", "PodDisruptionBudget"} {
		require.Equal(t, 1, kinds[kind], kind)
	}
}
