package deploy

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/broker"
	"github.com/keybroker/keybroker/internal/jwtissuer"
	"github.com/keybroker/keybroker/internal/testkit/kmstest/localkms"
	"github.com/keybroker/keybroker/internal/testkit/pgtest"
	"github.com/keybroker/keybroker/kek"
	"github.com/keybroker/keybroker/kekproviders"
)

// awsPolicy is an IAM policy document, with the fields that may be a
// string or a list normalised to lists.
type awsPolicy struct {
	Version   string
	Statement []awsStatement
}

type awsStatement struct {
	Sid       string
	Effect    string
	Principal map[string]stringOrList
	Action    stringOrList
	Resource  stringOrList
	Condition map[string]map[string]stringOrList
}

type stringOrList []string

func (s *stringOrList) UnmarshalJSON(b []byte) error {
	var one string
	if err := json.Unmarshal(b, &one); err == nil {
		*s = []string{one}
		return nil
	}
	return json.Unmarshal(b, (*[]string)(s))
}

func readJSON(t *testing.T, path string, out any) {
	t.Helper()
	raw, err := os.ReadFile(path)
	require.NoError(t, err)
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	require.NoError(t, dec.Decode(out), path)
}

// admits evaluates st for one KMS call the way IAM does, for the
// condition operators and keys this repository's policies use; anything
// else is an error, so the evaluator never passes what it does not
// understand.
func (st awsStatement) admits(action string, encryptionContext map[string]string) (bool, error) {
	if st.Effect != "Allow" || !slices.Contains(st.Action, action) {
		return false, nil
	}
	value := func(key string) (values []string, present bool, err error) {
		switch {
		case key == "kms:EncryptionContextKeys":
			for k := range encryptionContext {
				values = append(values, k)
			}
			return values, len(values) > 0, nil
		case strings.HasPrefix(key, "kms:EncryptionContext:"):
			v, ok := encryptionContext[strings.TrimPrefix(key, "kms:EncryptionContext:")]
			if !ok {
				return nil, false, nil
			}
			return []string{v}, true, nil
		default:
			return nil, false, fmt.Errorf("%s: condition key %q is not understood by this test", st.Sid, key)
		}
	}
	for operator, conditions := range st.Condition {
		for key, want := range conditions {
			got, present, err := value(key)
			if err != nil {
				return false, err
			}
			var ok bool
			switch operator {
			case "StringEquals":
				ok = present && len(got) == 1 && slices.Contains(want, got[0])
			case "ForAllValues:StringEquals":
				ok = !slices.ContainsFunc(got, func(v string) bool { return !slices.Contains(want, v) })
			case "Null":
				ok = len(want) == 1 && want[0] == strconv.FormatBool(!present)
			default:
				return false, fmt.Errorf("%s: operator %q is not understood by this test", st.Sid, operator)
			}
			if !ok {
				return false, nil
			}
		}
	}
	return true, nil
}

// deploymentKEK is the KEK URI of the Kubernetes Deployment.
func deploymentKEK(t *testing.T) string {
	t.Helper()
	_, dep := one[deployment](t, loadManifests(t), "Deployment")
	for _, e := range dep.Spec.Template.Spec.Containers[0].Env {
		if e.Name == "KEYBROKER_KEK" {
			return e.Value
		}
	}
	t.Fatal("the Deployment sets no KEYBROKER_KEK")
	return ""
}

func TestAWSKMSPolicy(t *testing.T) {
	t.Parallel()
	var policy awsPolicy
	readJSON(t, "kubernetes/iam/aws-kms-policy.json", &policy)
	require.Equal(t, "2012-10-17", policy.Version)
	p, err := kekproviders.ParseURI(deploymentKEK(t))
	require.NoError(t, err)

	var actions []string
	for _, st := range policy.Statement {
		require.Equal(t, "Allow", st.Effect, st.Sid)
		require.Empty(t, st.Principal, "%s: an identity policy for the role, not a key policy", st.Sid)
		for _, r := range st.Resource {
			require.True(t, strings.HasPrefix(r, "arn:aws:kms:"), "%s: scoped to the key, not %q", st.Sid, r)
			require.NotContains(t, r, "*", "%s: one key, no wildcard", st.Sid)
		}
		actions = append(actions, st.Action...)
		if slices.Equal(st.Action, []string{"kms:DescribeKey"}) {
			require.Empty(t, st.Condition, "DescribeKey carries no encryption context")
			continue
		}
		// Every statement that encrypts or decrypts pins this KEK id.
		require.Equal(t, stringOrList{p.ID}, st.Condition["StringEquals"]["kms:EncryptionContext:"+kek.BindingKEKID], st.Sid)
		require.NotEmpty(t, st.Condition["ForAllValues:StringEquals"]["kms:EncryptionContextKeys"], st.Sid)
	}
	for _, a := range []string{"kms:Encrypt", "kms:Decrypt", "kms:DescribeKey"} {
		require.Contains(t, actions, a)
	}
	for _, a := range actions {
		require.NotContains(t, a, "*", "no wildcard actions")
		require.NotContains(t, []string{"kms:CreateGrant", "kms:ScheduleKeyDeletion", "kms:PutKeyPolicy", "kms:DisableKey", "kms:GenerateDataKey",
			"kms:ReEncryptFrom", "kms:ReEncryptTo"}, a, "keybroker never calls it")
	}

	// A master key's row binding is admitted for this KEK id only, with
	// exactly the binding keys, and never without a user.
	row := broker.BindingContext("alice", p.ID, broker.FormatBound)
	require.True(t, policyAdmits(t, policy, "kms:Decrypt", row))
	require.True(t, policyAdmits(t, policy, "kms:Encrypt", kekproviders.CheckBinding(p.ID)), "the kek check probe")
	require.False(t, policyAdmits(t, policy, "kms:Decrypt", broker.BindingContext("alice", "other-kek", broker.FormatBound)))
	require.False(t, policyAdmits(t, policy, "kms:Decrypt", broker.BindingContext("alice", p.ID, 1)))
	require.False(t, policyAdmits(t, policy, "kms:Decrypt", map[string]string{"kek_id": p.ID, "format": "2"}), "no user")
	require.False(t, policyAdmits(t, policy, "kms:Decrypt", nil), "no context at all")
	withExtra := broker.BindingContext("alice", p.ID, broker.FormatBound)
	withExtra["tenant"] = "x"
	require.False(t, policyAdmits(t, policy, "kms:Decrypt", withExtra))
	require.False(t, policyAdmits(t, policy, "kms:GenerateDataKey", row))

	var trust awsPolicy
	readJSON(t, "kubernetes/iam/aws-irsa-trust-policy.json", &trust)
	require.Len(t, trust.Statement, 1)
	require.Equal(t, stringOrList{"sts:AssumeRoleWithWebIdentity"}, trust.Statement[0].Action)
	var sub string
	for k, v := range trust.Statement[0].Condition["StringEquals"] {
		if strings.HasSuffix(k, ":sub") {
			sub = v[0]
		}
	}
	require.Equal(t, "system:serviceaccount:keybroker:keybroker", sub, "only keybroker's ServiceAccount may assume the role")
}

func policyAdmits(t *testing.T, policy awsPolicy, action string, encryptionContext map[string]string) bool {
	t.Helper()
	for _, st := range policy.Statement {
		ok, err := st.admits(action, encryptionContext)
		require.NoError(t, err)
		if ok {
			return true
		}
	}
	return false
}

// kmsCall is one request keybroker made to KMS.
type kmsCall struct {
	Action  string            // e.g. kms:Encrypt
	Context map[string]string // its EncryptionContext
}

// recordingKMS is a reverse proxy in front of local-kms that records the
// action and encryption context of every request.
type recordingKMS struct {
	mu    sync.Mutex
	calls []kmsCall
}

func (r *recordingKMS) serve(t *testing.T, upstream string) string {
	t.Helper()
	target, err := url.Parse(upstream)
	require.NoError(t, err)
	proxy := httputil.NewSingleHostReverseProxy(target)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, err := io.ReadAll(req.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		req.Body = io.NopCloser(bytes.NewReader(body))
		var fields struct{ EncryptionContext map[string]string }
		_ = json.Unmarshal(body, &fields)
		// X-Amz-Target: TrentService.Encrypt
		_, op, _ := strings.Cut(req.Header.Get("X-Amz-Target"), ".")
		r.mu.Lock()
		r.calls = append(r.calls, kmsCall{"kms:" + op, fields.EncryptionContext})
		r.mu.Unlock()
		proxy.ServeHTTP(w, req)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

func (r *recordingKMS) recorded() []kmsCall {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.calls)
}

// TestAWSKMSPolicyAdmitsKeybrokersCalls runs the binary with the
// Deployment's awskms:// URI against local-kms, records every KMS call it
// makes — in the default cached envelope mode and with cache=off — and
// evaluates the IAM policy against each: a policy that would deny one of
// them would break the deployment.
func TestAWSKMSPolicyAdmitsKeybrokersCalls(t *testing.T) {
	t.Parallel()
	var policy awsPolicy
	readJSON(t, "kubernetes/iam/aws-kms-policy.json", &policy)
	uri := deploymentKEK(t)
	p, err := kekproviders.ParseURI(uri)
	require.NoError(t, err)
	require.Equal(t, kekproviders.SchemeAWSKMS, p.Scheme, "this test covers the AWS example")
	require.Equal(t, localkms.Region, p.URL.Query().Get("region"))

	kms := localkms.Start(t)
	kms.CreateKey(t, strings.TrimPrefix(p.URL.Host+p.URL.Path, "/alias/"))

	for name, extra := range map[string]string{"CachedEnvelope": "", "CacheOff": "&cache=off"} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			rec := &recordingKMS{}
			endpoint := rec.serve(t, kms.URL)
			role, _ := pgtest.NewPlainDatabase(t)
			env := []string{
				"DATABASE_URL=" + role.URL,
				"KEYBROKER_KEK=" + uri + "&endpoint=" + url.QueryEscape(endpoint) + extra,
				"AWS_ACCESS_KEY_ID=AKIDLOCALKMS",
				"AWS_SECRET_ACCESS_KEY=local-kms-secret",
				"AWS_EC2_METADATA_DISABLED=true",
			}
			// A user's first key and its fetch; then a second replica on
			// the same database opens what the first one wrapped.
			first := startServer(t, env...)
			require.Equal(t, http.StatusOK, vaultCall(t, first, http.MethodPost, "/init", "alice"))
			second := startServer(t, env...)
			require.Equal(t, http.StatusOK, vaultCall(t, second, http.MethodGet, "/key", "alice"))

			calls := rec.recorded()
			var ops []string
			for _, c := range calls {
				ops = append(ops, c.Action)
				require.True(t, policyAdmits(t, policy, c.Action, c.Context),
					"the policy denies %s with encryption context %v", c.Action, c.Context)
			}
			require.Contains(t, ops, "kms:Encrypt", "keybroker made no KMS encrypt: the test proves nothing")
			require.Contains(t, ops, "kms:Decrypt")
		})
	}
}

// vaultCall makes one authenticated request to the vault API and returns
// its status.
func vaultCall(t *testing.T, srv *server, method, path, user string) int {
	t.Helper()
	tok, err := srv.issuer.Mint(jwtissuer.Claims{Subject: user})
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, "http://"+srv.addr+"/api/v1/me/encryption-vault"+path, nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+tok)
	res, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	if res.StatusCode != http.StatusOK {
		t.Logf("%s %s: %d %s", method, path, res.StatusCode, body)
	}
	return res.StatusCode
}

func TestGCPKMSPolicy(t *testing.T) {
	t.Parallel()
	objs := loadManifests(t)
	sa, _ := one[struct{}](t, objs, "ServiceAccount")
	gsa := "serviceAccount:" + sa.Metadata.Annotations["iam.gke.io/gcp-service-account"]

	type bindings struct {
		Bindings []struct {
			Role    string   `json:"role"`
			Members []string `json:"members"`
		} `json:"bindings"`
	}
	var key bindings
	readJSON(t, "kubernetes/iam/gcp-kms-key-policy.json", &key)
	roles := map[string][]string{}
	for _, b := range key.Bindings {
		roles[b.Role] = b.Members
	}
	require.Equal(t, []string{gsa}, roles["roles/cloudkms.cryptoKeyEncrypterDecrypter"], "encrypt/decrypt on the one key, for keybroker's account only")
	for role, members := range roles {
		require.Contains(t, []string{"roles/cloudkms.cryptoKeyEncrypterDecrypter", "roles/cloudkms.viewer"}, role, "least privilege")
		require.Equal(t, []string{gsa}, members, role)
	}

	var wi bindings
	readJSON(t, "kubernetes/iam/gcp-workload-identity-policy.json", &wi)
	require.Len(t, wi.Bindings, 1)
	require.Equal(t, "roles/iam.workloadIdentityUser", wi.Bindings[0].Role)
	require.Len(t, wi.Bindings[0].Members, 1)
	require.True(t, strings.HasSuffix(wi.Bindings[0].Members[0], ".svc.id.goog["+sa.Metadata.Namespace+"/"+sa.Metadata.Name+"]"),
		wi.Bindings[0].Members[0])
}
