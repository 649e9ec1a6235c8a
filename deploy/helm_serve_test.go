package deploy

import (
	"crypto/rand"
	"encoding/base64"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/internal/testkit/kmstest/faketransit"
	"github.com/keybroker/keybroker/internal/testkit/kmstest/localkms"
	"github.com/keybroker/keybroker/internal/testkit/pgtest"
)

// TestHelmChartServes runs the binary with the environment each ci values
// file gives the container: the Secrets it names hold test values, the
// files its URIs read are written where the pod would mount them, and
// the KMS or Vault it names is an in-process fake (local-kms, the fake
// Transit). keybroker must start in production mode, hand a user a key
// and answer the chart's probes. The JWKS, the issuer pins and the listen
// addresses are the test server's (TestHelmChart checks the chart's).
//
// The Google Cloud KMS file is not run: the binary's Google client speaks
// TLS with application default credentials, which no fake here answers
// (kekproviders tests the provider against a fake in-process).
func TestHelmChartServes(t *testing.T) {
	t.Parallel()
	ran := 0
	for _, file := range ciValuesFiles(t) {
		provider, _ := valueAt(t, file, "kek.provider").(string)
		if provider == "gcpKMS" {
			continue
		}
		ran++
		t.Run(strings.TrimSuffix(filepath.Base(file), "-values.yaml"), func(t *testing.T) {
			t.Parallel()
			objs := renderFile(t, file, nil)
			c := objs.container(t)
			env := envOf(t, c)
			role, _ := pgtest.NewPlainDatabase(t)
			key := make([]byte, 32)
			rand.Read(key)
			secrets := map[string]string{ // Secret name/key → value
				"keybroker-database/url":            role.URL,
				"keybroker-kek/kek":                 base64.StdEncoding.EncodeToString(key),
				"keybroker-service-key/service-key": "a-service-key-for-the-chart-test",
				"keybroker-vault-approle/secret-id": "approle-secret-id",
			}
			const projectedToken = "a-projected-service-account-token"

			kek, err := url.Parse(env["KEYBROKER_KEK"].Value)
			require.NoError(t, err)
			q := kek.Query()
			var extra []string
			switch provider {
			case "awsKMS":
				kms := localkms.Start(t)
				kms.CreateKey(t, strings.TrimPrefix(kek.Host+kek.Path, "/alias/"))
				q.Set("endpoint", kms.URL)
				// What IRSA gives the pod, as static credentials.
				extra = append(extra, "AWS_ACCESS_KEY_ID=AKIDLOCALKMS", "AWS_SECRET_ACCESS_KEY=local-kms-secret", "AWS_EC2_METADATA_DISABLED=true")
			case "vaultTransit":
				vault := faketransit.Start(t)
				vault.CreateKey(t, kek.Host+kek.Path, true)
				if ns := env["VAULT_NAMESPACE"].Value; ns != "" {
					vault.SetNamespace(ns)
				}
				switch q.Get("auth") {
				case "kubernetes":
					vault.AddKubernetesRole(q.Get("role"), projectedToken, time.Hour, true)
				case "approle":
					vault.AddAppRole(q.Get("role_id"), secrets["keybroker-vault-approle/secret-id"], time.Hour, true)
				case "token":
					secrets["keybroker-vault-token/token"] = vault.Token(faketransit.TokenOptions{TTL: time.Hour, Renewable: true})
				}
				extra = append(extra, "VAULT_ADDR="+vault.URL)
			}
			// The files the pod mounts, where the URI reads them.
			for _, param := range []string{"jwt_file", "secret_id_file", "role_id_file", "token_file"} {
				p := q.Get(param)
				if p == "" {
					continue
				}
				src := resolvePodFile(t, objs, p)
				content := projectedToken
				if src.secret != nil {
					var ok bool
					content, ok = secrets[src.secret.SecretName+"/"+src.secretKey]
					require.True(t, ok, "no test value for Secret %s key %s", src.secret.SecretName, src.secretKey)
				}
				local := filepath.Join(t.TempDir(), param)
				require.NoError(t, os.WriteFile(local, []byte(content), 0o400))
				q.Set(param, local)
			}
			kek.RawQuery = q.Encode()

			var run []string
			for _, e := range c.Env {
				switch e.Name {
				case "KEYBROKER_ADDR", "KEYBROKER_JWKS_URL", "KEYBROKER_JWT_ISSUER", "KEYBROKER_JWT_AUDIENCE", "KEYBROKER_METRICS_ADDR":
					continue // the test server's, on loopback
				case "VAULT_ADDR", "VAULT_CACERT":
					continue // the fake's, plain HTTP
				case "KEYBROKER_KEK":
					run = append(run, "KEYBROKER_KEK="+kek.String())
					continue
				}
				if e.ValueFrom != nil {
					ref := e.ValueFrom.SecretKeyRef
					require.NotNil(t, ref, e.Name)
					v, ok := secrets[ref.Name+"/"+ref.Key]
					require.True(t, ok, "no test value for Secret %s key %s", ref.Name, ref.Key)
					run = append(run, e.Name+"="+v)
					continue
				}
				run = append(run, e.Name+"="+e.Value)
			}
			srv := startServer(t, append(run, extra...)...)

			for name, p := range map[string]string{"readiness": c.ReadinessProbe.HTTPGet.Path, "liveness": c.LivenessProbe.HTTPGet.Path, "startup": c.StartupProbe.HTTPGet.Path} {
				require.Equal(t, http.StatusOK, awaitStatus(t, "http://"+srv.addr+p), "%s probe %s", name, p)
			}
			require.Equal(t, http.StatusOK, vaultCall(t, srv, http.MethodPost, "/init", "alice"))
			require.Equal(t, http.StatusOK, vaultCall(t, srv, http.MethodGet, "/key", "alice"))
		})
	}
	require.GreaterOrEqual(t, ran, 4, "the chart's KEK kinds are run")
}
