package vaultapi_test

import (
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/keybroker/keybroker/internal/testkit/pgtest"
	"github.com/keybroker/keybroker/vaultapi"
)

// TestDocumentedCodesAreTheSentCodes: the OpenAPI document lists exactly
// the codes of the error table, each sent with a status.
func TestDocumentedCodesAreTheSentCodes(t *testing.T) {
	t.Parallel()
	doc, _ := loadOpenAPI(t)
	var documented []string
	for _, c := range doc.Components.Schemas["Error"].Value.Properties["code"].Value.Enum {
		documented = append(documented, c.(string))
	}
	var sent []string
	for code, status := range vaultapi.ErrorCodes() {
		require.GreaterOrEqual(t, status, 400, code)
		sent = append(sent, code)
	}
	slices.Sort(documented)
	slices.Sort(sent)
	require.Equal(t, sent, documented)
}

// TestAuditStatusIsTheAnsweredStatus walks the vault routes through each
// outcome they audit — done, 400, 403, 404, 409, 500 and 503 — and
// checks that the audit row each request wrote records the status the
// client got (a created vault excepted: recorded 201, answered 200, as
// the original service did).
func TestAuditStatusIsTheAnsweredStatus(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	answeredAsAudited := func(user, method, path string, body any, status int) {
		t.Helper()
		before := len(e.auditActions(user))
		r := e.do(method, path, user, body)
		require.Equal(t, status, r.status, "%s %s: %s", method, path, r.raw)
		rows := e.auditActions(user)
		require.Greater(t, len(rows), before, "%s %s wrote no audit row", method, path)
		last := rows[len(rows)-1]
		recorded, err := strconv.Atoi(last[strings.LastIndex(last, ":")+1:])
		require.NoError(t, err)
		if last == "init:201" || last == "rotate:201" {
			recorded = http.StatusOK
		}
		require.Equal(t, r.status, recorded, "%s %s answered %d, audited %s", method, path, r.status, last)
	}
	wrap := map[string]string{"recoveryWrappedMk": b64(48, 1), "recoveryIv": b64(12, 2)}
	answeredAsAudited("alice", http.MethodGet, "/key", nil, 404)
	answeredAsAudited("alice", http.MethodPost, "/recovery-wrap", wrap, 404)
	answeredAsAudited("alice", http.MethodPost, "/init", nil, 200)
	answeredAsAudited("alice", http.MethodPost, "/zero-knowledge", map[string]any{"enable": true}, 400)
	answeredAsAudited("alice", http.MethodPost, "/recovery-wrap", wrap, 200)
	answeredAsAudited("alice", http.MethodPost, "/zero-knowledge", map[string]any{"enable": true}, 200)
	answeredAsAudited("alice", http.MethodPost, "/rotate", nil, 409)
	answeredAsAudited("alice", http.MethodDelete, "/recovery-wrap", nil, 409)
	answeredAsAudited("alice", http.MethodPost, "/recovery-wrap", wrap, 403)
	withProof := map[string]string{"recoveryWrappedMk": b64(48, 1), "recoveryIv": b64(12, 2), "keyProof": b64(32, 3)}
	answeredAsAudited("alice", http.MethodPost, "/recovery-wrap", withProof, 403)
	answeredAsAudited("alice", http.MethodPost, "/zero-knowledge", map[string]any{"enable": false, "masterKey": b64(32, 4)}, 409)
	answeredAsAudited("alice", http.MethodGet, "/key", nil, 200)

	answeredAsAudited("bob", http.MethodPost, "/rotate", nil, 200)
	pgtest.Exec(t, e.admin, `UPDATE keybroker.encryption_vaults SET wrapped_mk = $1 WHERE user_id = 'bob'`, b64(80, 5))
	answeredAsAudited("bob", http.MethodGet, "/key", nil, 500)
	pgtest.Exec(t, e.admin, `UPDATE keybroker.encryption_vaults SET kek_id = 'removed' WHERE user_id = 'bob'`)
	answeredAsAudited("bob", http.MethodGet, "/key", nil, 503)
}
