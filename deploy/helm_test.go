package deploy

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"
	"helm.sh/helm/v4/pkg/chart/common"
	chartutil "helm.sh/helm/v4/pkg/chart/common/util"
	"helm.sh/helm/v4/pkg/chart/v2/lint"
	"helm.sh/helm/v4/pkg/chart/v2/lint/support"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	"helm.sh/helm/v4/pkg/engine"
	releaseutil "helm.sh/helm/v4/pkg/release/v1/util"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/keybroker/keybroker/kekproviders"
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

// TestHelmChart renders the chart with each ci values file and checks
// what a deployment depends on.
func TestHelmChart(t *testing.T) {
	t.Parallel()
	readme := readmeSettings(t)
	for _, file := range ciValuesFiles(t) {
		t.Run(strings.TrimSuffix(filepath.Base(file), "-values.yaml"), func(t *testing.T) {
			t.Parallel()
			objs := renderFile(t, file, nil)
			dep := objs.Deployment
			pod := dep.Spec.Template.Spec
			podLabels := dep.Spec.Template.Labels
			c := objs.container(t)
			env := envOf(t, c)
			ports := map[string]int32{}
			for _, p := range c.Ports {
				ports[p.Name] = p.ContainerPort
			}
			provider, _ := valueAt(t, file, "kek.provider").(string)
			https := env["KEYBROKER_TLS_CERT"].Value != ""

			t.Run("Selectors", func(t *testing.T) {
				require.NotNil(t, dep.Spec.Replicas)
				require.GreaterOrEqual(t, *dep.Spec.Replicas, int32(2), "one replica is an outage at every drain")
				requireSelects(t, dep.Spec.Selector.MatchLabels, podLabels, "Deployment selector")
				require.Equal(t, chartRelease, dep.Spec.Selector.MatchLabels["app.kubernetes.io/instance"],
					"the selector must not catch another release's pods")
				require.NotEmpty(t, objs.Services)
				for name, svc := range objs.Services {
					requireSelects(t, svc.Spec.Selector, podLabels, "Service "+name)
					for _, p := range svc.Spec.Ports {
						require.Equal(t, intstr.String, p.TargetPort.Type, "Service %s: target a named port", name)
						require.Contains(t, ports, p.TargetPort.StrVal, "Service %s targets no container port", name)
					}
				}
				for _, tsc := range pod.TopologySpreadConstraints {
					requireSelects(t, tsc.LabelSelector.MatchLabels, podLabels, "topology spread "+tsc.TopologyKey)
				}
				if np := objs.NetworkPolicy; np != nil {
					requireSelects(t, np.Spec.PodSelector.MatchLabels, podLabels, "NetworkPolicy")
				}
			})

			t.Run("PodDisruptionBudget", func(t *testing.T) {
				pdb := objs.PDB
				require.NotNil(t, pdb)
				requireSelects(t, pdb.Spec.Selector.MatchLabels, podLabels, "PodDisruptionBudget selector")
				require.Equal(t, dep.Spec.Selector.MatchLabels, pdb.Spec.Selector.MatchLabels)
				switch {
				case pdb.Spec.MinAvailable != nil:
					require.Less(t, pdb.Spec.MinAvailable.IntValue(), int(*dep.Spec.Replicas), "a PDB equal to replicas blocks every drain")
				case pdb.Spec.MaxUnavailable != nil:
					require.Equal(t, 1, pdb.Spec.MaxUnavailable.IntValue(), "one replica at a time")
				default:
					t.Fatal("the PodDisruptionBudget sets neither minAvailable nor maxUnavailable")
				}
				ru := dep.Spec.Strategy.RollingUpdate
				require.NotNil(t, ru)
				require.Equal(t, 0, ru.MaxUnavailable.IntValue(), "a rolling update never takes a ready replica first")
			})

			t.Run("ProbesAndPorts", func(t *testing.T) {
				require.Contains(t, ports, "http")
				require.Equal(t, ":"+strconv.Itoa(int(ports["http"])), env["KEYBROKER_ADDR"].Value, "keybroker listens on the probed port")
				scheme := corev1.URISchemeHTTP
				if https {
					scheme = corev1.URISchemeHTTPS
					require.NotEmpty(t, env["KEYBROKER_TLS_KEY"].Value)
				}
				for name, p := range map[string]*corev1.Probe{"readiness": c.ReadinessProbe, "liveness": c.LivenessProbe, "startup": c.StartupProbe} {
					require.NotNil(t, p, name)
					require.NotNil(t, p.HTTPGet, name)
					require.Equal(t, intstr.FromString("http"), p.HTTPGet.Port, "%s probe", name)
					require.Equal(t, scheme, p.HTTPGet.Scheme, "%s probe", name)
				}
				require.Equal(t, "/readyz", c.ReadinessProbe.HTTPGet.Path)
				require.Equal(t, "/healthz", c.LivenessProbe.HTTPGet.Path)
				require.Equal(t, "/healthz", c.StartupProbe.HTTPGet.Path)
				require.NotNil(t, c.Lifecycle, "preStop sleep on Kubernetes %s", chartKubeVersion)
				require.NotNil(t, c.Lifecycle.PreStop.Sleep)
				require.Greater(t, *pod.TerminationGracePeriodSeconds, c.Lifecycle.PreStop.Sleep.Seconds)

				metricsAddr, separate := env["KEYBROKER_METRICS_ADDR"]
				require.Equal(t, separate, ports["metrics"] != 0, "a metrics port iff a metrics listener")
				if separate {
					require.Equal(t, ":"+strconv.Itoa(int(ports["metrics"])), metricsAddr.Value)
					require.NotEqual(t, ports["http"], ports["metrics"])
					for name, svc := range objs.Services {
						for _, p := range svc.Spec.Ports {
							if p.TargetPort.StrVal == "metrics" {
								require.Len(t, svc.Spec.Ports, 1, "Service %s: /metrics is not exposed beside the API", name)
							}
						}
					}
				}
				if sm := objs.ServiceMonitor; sm != nil {
					require.Len(t, sm.Spec.Endpoints, 1)
					ep := sm.Spec.Endpoints[0]
					require.Equal(t, "/metrics", ep.Path)
					var scraped []*corev1.Service
					for _, svc := range objs.Services {
						if subset(sm.Spec.Selector.MatchLabels, svc.Labels) {
							scraped = append(scraped, svc)
						}
					}
					require.Len(t, scraped, 1, "the ServiceMonitor selects exactly one Service")
					require.Equal(t, []string{chartNamespace}, sm.Spec.NamespaceSelector.MatchNames)
					var target string
					for _, p := range scraped[0].Spec.Ports {
						if p.Name == ep.Port {
							target = p.TargetPort.StrVal
						}
					}
					if separate {
						require.Equal(t, "metrics", target, "scraped on the metrics listener")
						require.Equal(t, "http", string(ptrValue(ep.Scheme)), "the metrics listener is plain HTTP")
					} else {
						require.Equal(t, "http", target)
					}
				}
			})

			t.Run("SecurityContext", func(t *testing.T) {
				psc := pod.SecurityContext
				require.NotNil(t, psc)
				require.True(t, *psc.RunAsNonRoot)
				require.NotZero(t, *psc.RunAsUser)
				require.Equal(t, corev1.SeccompProfileTypeRuntimeDefault, psc.SeccompProfile.Type)
				sc := c.SecurityContext
				require.NotNil(t, sc)
				require.True(t, *sc.RunAsNonRoot)
				require.NotZero(t, *sc.RunAsUser)
				require.True(t, *sc.ReadOnlyRootFilesystem)
				require.False(t, *sc.AllowPrivilegeEscalation)
				require.False(t, *sc.Privileged)
				require.Equal(t, []corev1.Capability{"ALL"}, sc.Capabilities.Drop)
				require.Empty(t, sc.Capabilities.Add)
				require.Equal(t, corev1.SeccompProfileTypeRuntimeDefault, sc.SeccompProfile.Type)
				require.False(t, pod.HostNetwork || pod.HostPID || pod.HostIPC)
				for _, v := range pod.Volumes {
					require.Nil(t, v.HostPath, "volume %s", v.Name)
					if v.Secret != nil {
						require.Equal(t, int32(0o440), *v.Secret.DefaultMode, "secret volume %s: owner and fsGroup only", v.Name)
						require.Equal(t, *psc.RunAsGroup, *psc.FSGroup, "secret volume %s: its group is the pod's", v.Name)
					}
				}
			})

			t.Run("ServiceAccount", func(t *testing.T) {
				sa := objs.ServiceAccount
				require.NotNil(t, sa)
				require.Equal(t, sa.Name, pod.ServiceAccountName)
				require.False(t, *pod.AutomountServiceAccountToken, "keybroker never calls the Kubernetes API")
				require.False(t, *sa.AutomountServiceAccountToken)
				switch provider {
				case "awsKMS":
					arn := sa.Annotations["eks.amazonaws.com/role-arn"]
					require.Regexp(t, `^arn:aws:iam::[0-9]{12}:role/.+$`, arn, "IRSA")
					require.Equal(t, valueAt(t, file, "kek.awsKMS.roleArn"), arn)
					require.NotContains(t, sa.Annotations, "iam.gke.io/gcp-service-account")
				case "gcpKMS":
					gsa := sa.Annotations["iam.gke.io/gcp-service-account"]
					require.Regexp(t, `^[^@]+@[^@]+\.iam\.gserviceaccount\.com$`, gsa, "Workload Identity")
					require.Equal(t, valueAt(t, file, "kek.gcpKMS.serviceAccount"), gsa)
					require.NotContains(t, sa.Annotations, "eks.amazonaws.com/role-arn")
				default:
					require.Empty(t, sa.Annotations, "no cloud identity for a %s KEK", provider)
				}
			})

			t.Run("Settings", func(t *testing.T) {
				plain := map[string]string{}
				for name, e := range env {
					plain[name] = e.Value
					if strings.HasPrefix(name, "KEYBROKER_") {
						require.True(t, readme[name], "%s is no setting of keybroker's (README configuration table)", name)
					}
				}
				requirePinned(t, file, plain)
				require.Equal(t, "production", env["KEYBROKER_ENV"].Value)
				require.NotContains(t, env, "KEYBROKER_ALLOW_PRIVILEGED_DB_ROLE")
				db := env["DATABASE_URL"]
				require.NotNil(t, db.ValueFrom, "the database URL carries a password: take it from a Secret")
				require.NotNil(t, db.ValueFrom.SecretKeyRef)
			})

			t.Run("NoSecretInPlainEnv", func(t *testing.T) {
				require.Empty(t, c.EnvFrom)
				secretVars := slices.Clone(chartSecretVariables)
				p, err := kekproviders.ParseURI(env["KEYBROKER_KEK"].Value)
				require.NoError(t, err)
				if p.Scheme == kekproviders.SchemeEnv {
					secretVars = append(secretVars, p.URL.Host)
				}
				for _, e := range c.Env {
					require.False(t, looksLikeKey(e.Value), "key material in %s", e.Name)
					if u, err := url.Parse(e.Value); err == nil && u.User != nil {
						_, hasPassword := u.User.Password()
						require.False(t, hasPassword, "a password in %s", e.Name)
					}
					if slices.Contains(secretVars, e.Name) {
						require.Empty(t, e.Value, "%s is a secret: from a Secret, never a value", e.Name)
						require.NotNil(t, e.ValueFrom, e.Name)
						require.NotNil(t, e.ValueFrom.SecretKeyRef, e.Name)
					}
				}
			})

			t.Run("KEK", func(t *testing.T) {
				p, err := kekproviders.ParseURI(env["KEYBROKER_KEK"].Value)
				require.NoError(t, err)
				require.Equal(t, valueAt(t, file, "kek.id"), p.ID)
				q := p.URL.Query()
				switch provider {
				case "secret":
					require.Equal(t, kekproviders.SchemeEnv, p.Scheme)
					v := env[p.URL.Host]
					require.NotNil(t, v.ValueFrom, "the KEK's variable %s comes from a Secret", p.URL.Host)
					require.Equal(t, valueAt(t, file, "kek.secret.existingSecret"), v.ValueFrom.SecretKeyRef.Name)
				case "awsKMS":
					require.Equal(t, kekproviders.SchemeAWSKMS, p.Scheme)
					require.Equal(t, valueAt(t, file, "kek.awsKMS.region"), q.Get("region"))
				case "gcpKMS":
					require.Equal(t, kekproviders.SchemeGCPKMS, p.Scheme)
					require.Equal(t, valueAt(t, file, "kek.gcpKMS.key"), p.URL.Host+p.URL.Path)
				case "vaultTransit":
					require.Equal(t, kekproviders.SchemeVaultTransit, p.Scheme)
					require.Equal(t, valueAt(t, file, "kek.vaultTransit.address"), env["VAULT_ADDR"].Value)
					method := valueAt(t, file, "kek.vaultTransit.auth.method")
					require.Equal(t, method, q.Get("auth"))
					switch method {
					case "kubernetes":
						f := resolvePodFile(t, objs, q.Get("jwt_file"))
						require.NotNil(t, f.token, "Vault's Kubernetes login reads a projected token")
						require.Equal(t, valueAt(t, file, "kek.vaultTransit.auth.kubernetes.audience"), f.token.Audience,
							"a token for Vault alone, not the API server's")
					case "approle":
						f := resolvePodFile(t, objs, q.Get("secret_id_file"))
						require.NotNil(t, f.secret, "the secret id comes from a Secret")
						require.Equal(t, valueAt(t, file, "kek.vaultTransit.auth.approle.secretIDSecret.name"), f.secret.SecretName)
						require.NotEmpty(t, q.Get("role_id"))
					case "token":
						require.NotNil(t, env["VAULT_TOKEN"].ValueFrom)
					default:
						t.Fatalf("auth method %v", method)
					}
					if ca := env["VAULT_CACERT"].Value; ca != "" {
						require.NotNil(t, resolvePodFile(t, objs, ca).secret)
					}
				default:
					t.Fatalf("kek.provider %q", provider)
				}
				for _, name := range []string{"KEYBROKER_TLS_CERT", "KEYBROKER_TLS_KEY"} {
					if f := env[name].Value; f != "" {
						src := resolvePodFile(t, objs, f)
						require.NotNil(t, src.secret, name)
						require.Equal(t, valueAt(t, file, "tls.secretName"), src.secret.SecretName)
					}
				}
			})

			t.Run("OptionalObjects", func(t *testing.T) {
				require.Equal(t, valueAt(t, file, "serviceMonitor.enabled") == true, objs.ServiceMonitor != nil)
				require.Equal(t, valueAt(t, file, "networkPolicy.enabled") == true, objs.NetworkPolicy != nil)
				if np := objs.NetworkPolicy; np != nil {
					var allowed []string
					for _, r := range np.Spec.Ingress {
						for _, p := range r.Ports {
							allowed = append(allowed, p.Port.StrVal)
							require.Contains(t, ports, p.Port.StrVal, "the NetworkPolicy opens a port the pod does not have")
						}
						if slices.ContainsFunc(r.Ports, func(p networkingv1.NetworkPolicyPort) bool { return p.Port.StrVal == "metrics" }) {
							require.NotEmpty(t, r.From, "the metrics port is open to its scrapers only")
						}
					}
					require.Contains(t, allowed, "http")
					if valueAt(t, file, "networkPolicy.egress.enabled") == true {
						require.Contains(t, np.Spec.PolicyTypes, networkingv1.PolicyTypeEgress)
						require.NotEmpty(t, np.Spec.Egress[0].Ports, "DNS first")
						require.Equal(t, int32(53), np.Spec.Egress[0].Ports[0].Port.IntVal)
					}
				}
			})
		})
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

// TestHelmChartLint runs helm lint's rules (Chart.yaml, values against
// the schema, templates rendered and parsed, metadata names) through the
// SDK with each ci values file.
func TestHelmChartLint(t *testing.T) {
	t.Parallel()
	kv, err := common.ParseKubeVersion(chartKubeVersion)
	require.NoError(t, err)
	for _, file := range ciValuesFiles(t) {
		res := lint.RunAll(chartDir, chartValues(t, []string{file}, nil), chartNamespace, lint.WithKubeVersion(kv))
		for _, m := range res.Messages {
			require.LessOrEqual(t, m.Severity, support.InfoSev, "%s: helm lint: %s: %v", file, m.Path, m.Err)
		}
	}
	// Without values the chart does not render: it has no issuer,
	// database or KEK to guess.
	res := lint.RunAll(chartDir, nil, chartNamespace, lint.WithKubeVersion(kv))
	require.Equal(t, support.ErrorSev, res.HighestSeverity)
}

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
