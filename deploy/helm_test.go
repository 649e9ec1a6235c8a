package deploy

import (
	"net/url"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"helm.sh/helm/v4/pkg/chart/common"
	"helm.sh/helm/v4/pkg/chart/v2/lint"
	"helm.sh/helm/v4/pkg/chart/v2/lint/support"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/keybroker/keybroker/kekproviders"
)

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
