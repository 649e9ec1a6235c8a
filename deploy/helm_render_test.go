package deploy

import (
	"bufio"
	"maps"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"
	"helm.sh/helm/v4/pkg/chart/common"
	chartutil "helm.sh/helm/v4/pkg/chart/common/util"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	"helm.sh/helm/v4/pkg/engine"
	releaseutil "helm.sh/helm/v4/pkg/release/v1/util"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
)

// The chart is rendered as `helm install` renders it, through the Helm
// SDK (helm.sh/helm/v4): the same loader, values coalescing, schema
// validation and template engine, against a Kubernetes version given
// here (test builds of the SDK otherwise assume 1.20). Every object is
// then decoded strictly into the Kubernetes API types — an unknown or
// duplicate field, a field of the wrong type or case, an unparsable
// quantity or an unregistered kind fails — and ServiceMonitor into the
// prometheus-operator's own Go types.

const (
	chartDir       = "helm/keybroker"
	chartRelease   = "keybroker"
	chartNamespace = "keybroker"
	// The Kubernetes version charts are rendered for: a current one,
	// with the preStop sleep action (1.30+).
	chartKubeVersion = "v1.33.0"
)

// chartObjects are the objects the chart may render; anything else fails
// decoding.
type chartObjects struct {
	Deployment     *appsv1.Deployment
	Services       map[string]*corev1.Service // by name
	ServiceAccount *corev1.ServiceAccount
	PDB            *policyv1.PodDisruptionBudget
	ServiceMonitor *monitoringv1.ServiceMonitor
	NetworkPolicy  *networkingv1.NetworkPolicy
	all            []runtime.Object
}

type renderOptions struct {
	valuesFiles          []string
	set                  map[string]any // merged over the files, as --set-json does
	skipSchemaValidation bool
	kubeVersion          string
}

// chartValues reads the values files and merges set over them, as the
// helm CLI merges -f and --set.
func chartValues(t *testing.T, files []string, set map[string]any) map[string]any {
	t.Helper()
	vals := map[string]any{}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		require.NoError(t, err)
		fileVals, err := loader.LoadValues(strings.NewReader(string(raw)))
		require.NoError(t, err, f)
		vals = loader.MergeMaps(vals, fileVals)
	}
	if set != nil {
		vals = loader.MergeMaps(vals, set)
	}
	return vals
}

// renderChart renders the chart's templates, or returns the error helm
// install or helm template would report.
func renderChart(t *testing.T, o renderOptions) (map[string]string, error) {
	t.Helper()
	chrt, err := loader.Load(chartDir)
	require.NoError(t, err)
	caps := common.DefaultCapabilities.Copy()
	kv, err := common.ParseKubeVersion(cmpOr(o.kubeVersion, chartKubeVersion))
	require.NoError(t, err)
	caps.KubeVersion = *kv
	vals, err := chartutil.ToRenderValuesWithSchemaValidation(chrt, chartValues(t, o.valuesFiles, o.set),
		common.ReleaseOptions{Name: chartRelease, Namespace: chartNamespace, IsInstall: true, Revision: 1},
		caps, o.skipSchemaValidation)
	if err != nil {
		return nil, err
	}
	return engine.Render(chrt, vals)
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

var chartDecoder = func() runtime.Decoder {
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{
		corev1.AddToScheme, appsv1.AddToScheme, policyv1.AddToScheme, networkingv1.AddToScheme, monitoringv1.AddToScheme,
	} {
		if err := add(scheme); err != nil {
			panic(err)
		}
	}
	return serializer.NewCodecFactory(scheme, serializer.EnableStrict).UniversalDeserializer()
}()

// decodeChart decodes every rendered manifest strictly.
func decodeChart(t *testing.T, manifests map[string]string) chartObjects {
	t.Helper()
	objs := chartObjects{Services: map[string]*corev1.Service{}}
	for _, name := range slices.Sorted(maps.Keys(manifests)) {
		if !strings.HasSuffix(name, ".yaml") {
			continue // NOTES.txt, _helpers.tpl
		}
		for _, doc := range releaseutil.SplitManifests(manifests[name]) {
			if strings.TrimSpace(stripComments(doc)) == "" {
				continue
			}
			obj, gvk, err := chartDecoder.Decode([]byte(doc), nil, nil)
			require.NoError(t, err, "%s does not decode strictly:\n%s", name, doc)
			objs.all = append(objs.all, obj)
			switch o := obj.(type) {
			case *appsv1.Deployment:
				require.Nil(t, objs.Deployment, "a second Deployment")
				objs.Deployment = o
			case *corev1.Service:
				require.NotContains(t, objs.Services, o.Name)
				objs.Services[o.Name] = o
			case *corev1.ServiceAccount:
				require.Nil(t, objs.ServiceAccount, "a second ServiceAccount")
				objs.ServiceAccount = o
			case *policyv1.PodDisruptionBudget:
				require.Nil(t, objs.PDB, "a second PodDisruptionBudget")
				objs.PDB = o
			case *monitoringv1.ServiceMonitor:
				require.Nil(t, objs.ServiceMonitor, "a second ServiceMonitor")
				objs.ServiceMonitor = o
			case *networkingv1.NetworkPolicy:
				require.Nil(t, objs.NetworkPolicy, "a second NetworkPolicy")
				objs.NetworkPolicy = o
			default:
				t.Fatalf("%s renders a %s: the chart creates no such object (a Secret is the operator's)", name, gvk)
			}
		}
	}
	require.NotNil(t, objs.Deployment)
	return objs
}

func stripComments(doc string) string {
	var b strings.Builder
	for _, line := range strings.Split(doc, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(line), "#") {
			b.WriteString(line + "\n")
		}
	}
	return b.String()
}

// renderFile renders and decodes the chart with one ci values file.
func renderFile(t *testing.T, file string, set map[string]any) chartObjects {
	t.Helper()
	manifests, err := renderChart(t, renderOptions{valuesFiles: []string{file}, set: set})
	require.NoError(t, err, file)
	return decodeChart(t, manifests)
}

// ciValuesFiles are the chart's example values, one per kind of KEK.
func ciValuesFiles(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob(chartDir + "/ci/*-values.yaml")
	require.NoError(t, err)
	require.NotEmpty(t, files)
	return files
}

// valueAt reads a dotted path from a values file.
func valueAt(t *testing.T, file, dotted string) any {
	t.Helper()
	raw, err := os.ReadFile(file)
	require.NoError(t, err)
	var v any
	require.NoError(t, yaml.Unmarshal(raw, &v))
	for _, k := range strings.Split(dotted, ".") {
		m, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = m[k]
	}
	return v
}

func (o chartObjects) container(t *testing.T) corev1.Container {
	t.Helper()
	cs := o.Deployment.Spec.Template.Spec.Containers
	require.Len(t, cs, 1)
	return cs[0]
}

// envOf returns the container's environment by name; a name set twice
// fails (Kubernetes would keep the last one silently).
func envOf(t *testing.T, c corev1.Container) map[string]corev1.EnvVar {
	t.Helper()
	env := map[string]corev1.EnvVar{}
	for _, e := range c.Env {
		require.NotContains(t, env, e.Name, "%s is set twice", e.Name)
		env[e.Name] = e
	}
	return env
}

// chartSecretVariables are the variables that hold a secret: each must
// come from a Secret.
var chartSecretVariables = []string{
	"DATABASE_URL", "MANA_AUTH_KEK", "KEYBROKER_SERVICE_KEY", "MANA_SERVICE_KEY", "VAULT_TOKEN",
	"AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
}

// podFile is where a file the container reads comes from.
type podFile struct {
	secret    *corev1.SecretVolumeSource
	secretKey string
	token     *corev1.ServiceAccountTokenProjection
}

// resolvePodFile finds the volume behind a path the container reads: a
// read-only mount of a Secret's key or of a projected token.
func resolvePodFile(t *testing.T, objs chartObjects, p string) podFile {
	t.Helper()
	c := objs.container(t)
	dir, base := path.Split(p)
	for _, m := range c.VolumeMounts {
		if path.Clean(dir) != m.MountPath {
			continue
		}
		require.True(t, m.ReadOnly, "mount %s", m.MountPath)
		for _, v := range objs.Deployment.Spec.Template.Spec.Volumes {
			if v.Name != m.Name {
				continue
			}
			switch {
			case v.Secret != nil:
				for _, it := range v.Secret.Items {
					if it.Path == base {
						return podFile{secret: v.Secret, secretKey: it.Key}
					}
				}
				require.Empty(t, v.Secret.Items, "%s: no item %s", v.Name, base)
				return podFile{secret: v.Secret, secretKey: base}
			case v.Projected != nil:
				for _, src := range v.Projected.Sources {
					if src.ServiceAccountToken != nil && src.ServiceAccountToken.Path == base {
						return podFile{token: src.ServiceAccountToken}
					}
				}
			}
			t.Fatalf("volume %s has no %s", v.Name, base)
		}
		t.Fatalf("mount %s names no volume", m.Name)
	}
	t.Fatalf("no volume is mounted at %s (for %s)", dir, p)
	return podFile{}
}

// readmeSettings are the variables the README's configuration table
// documents.
func readmeSettings(t *testing.T) map[string]bool {
	t.Helper()
	f, err := os.Open("../README.md")
	require.NoError(t, err)
	defer f.Close()
	names := map[string]bool{}
	row := regexp.MustCompile("^\\| `([A-Z][A-Z0-9_]+)` \\|")
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if m := row.FindStringSubmatch(sc.Text()); m != nil {
			names[m[1]] = true
		}
	}
	require.NoError(t, sc.Err())
	require.True(t, names["KEYBROKER_JWT_ISSUER"], "the README's configuration table was not found")
	return names
}

func requireSelects(t *testing.T, selector, labels map[string]string, what string) {
	t.Helper()
	require.NotEmpty(t, selector, what)
	for k, v := range selector {
		require.Equal(t, v, labels[k], "%s: %s", what, k)
	}
}

func subset(selector, labels map[string]string) bool {
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return len(selector) > 0
}

func ptrValue[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}
