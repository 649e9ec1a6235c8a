{{/* The chart's name, shortened to a label's 63 characters. */}}
{{- define "keybroker.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The objects' name: the release's, with the chart's name unless it already contains it. */}}
{{- define "keybroker.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "keybroker.selectorLabels" -}}
app.kubernetes.io/name: {{ include "keybroker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "keybroker.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "keybroker.selectorLabels" . }}
app.kubernetes.io/version: {{ default .Chart.AppVersion .Values.image.tag | replace "+" "_" | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "keybroker.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "keybroker.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name: name the existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "keybroker.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Where the pod's files are mounted. */}}
{{- define "keybroker.tlsDir" -}}/etc/keybroker/tls{{- end }}
{{- define "keybroker.vaultCADir" -}}/etc/keybroker/vault-ca{{- end }}
{{- define "keybroker.vaultAppRoleDir" -}}/etc/keybroker/vault-approle{{- end }}
{{- define "keybroker.vaultTokenDir" -}}/var/run/secrets/keybroker/vault{{- end }}

{{/*
The environment variables whose values are secrets: they come from a Secret (valueFrom), never
from a value in this chart.
*/}}
{{- define "keybroker.secretVariables" -}}
{{- list "DATABASE_URL" "MANA_AUTH_KEK" "KEYBROKER_SERVICE_KEY" "MANA_SERVICE_KEY" "VAULT_TOKEN" "AWS_SECRET_ACCESS_KEY" "AWS_SESSION_TOKEN" .Values.kek.secret.variable | toJson }}
{{- end }}

{{/*
The variables the chart sets itself (or never lets through: the privileged-role escape hatch is
for tests only).
*/}}
{{- define "keybroker.managedVariables" -}}
{{- list "KEYBROKER_ENV" "KEYBROKER_ADDR" "PORT" "KEYBROKER_METRICS_ADDR" "DATABASE_URL" "KEYBROKER_SCHEMA" "KEYBROKER_MIGRATE" "KEYBROKER_KEK" "KEYBROKER_KEK_ID" "KEYBROKER_KEK_RETIRED" "KEYBROKER_JWKS_URL" "KEYBROKER_JWT_ISSUER" "KEYBROKER_JWT_AUDIENCE" "KEYBROKER_JWT_UNPINNED" "KEYBROKER_JWT_MAX_LIFETIME" "KEYBROKER_JWT_LEEWAY" "KEYBROKER_TLS_CERT" "KEYBROKER_TLS_KEY" "KEYBROKER_SERVICE_KEY" "KEYBROKER_ALLOW_PRIVILEGED_DB_ROLE" "VAULT_ADDR" "VAULT_NAMESPACE" "VAULT_CACERT" "VAULT_TOKEN" | toJson }}
{{- end }}

{{/*
The plain settings the chart sets from audit.* and rollout.*, as a JSON object: only those set, so
an install leaving them empty renders no new variable.
*/}}
{{- define "keybroker.optionalSettings" -}}
{{- $v := .Values }}
{{- $out := dict }}
{{- with $v.audit.retention }}{{ $_ := set $out "KEYBROKER_AUDIT_RETENTION" (toString .) }}{{ end }}
{{- with $v.audit.sealInterval }}{{ $_ := set $out "KEYBROKER_AUDIT_SEAL_INTERVAL" (toString .) }}{{ end }}
{{- with $v.rollout.heartbeat }}{{ $_ := set $out "KEYBROKER_ROLLOUT_HEARTBEAT" (toString .) }}{{ end }}
{{- $replicas := $v.rollout.replicas }}
{{- if eq (toString $replicas) "replicaCount" }}
{{- $_ := set $out "KEYBROKER_ROLLOUT_REPLICAS" (toString $v.replicaCount) }}
{{- else if not (kindIs "invalid" $replicas) }}
{{- $_ := set $out "KEYBROKER_ROLLOUT_REPLICAS" (toString $replicas) }}
{{- end }}
{{- toJson $out }}
{{- end }}

{{- define "keybroker.grantRecipientsDir" -}}/etc/keybroker/grant-recipients{{- end }}

{{/*
The checks values.schema.json makes, again with the same messages, for an install run with
--skip-schema-validation.
*/}}
{{- define "keybroker.validate" -}}
{{- $v := .Values }}
{{- if not $v.jwt.jwksURL }}
{{- fail "jwt.jwksURL is required: the JWKS URL of the token issuer (Better Auth: https://AUTH_ORIGIN/api/auth/jwks)" }}
{{- end }}
{{- if not $v.jwt.unpinned }}
{{- if or (not $v.jwt.issuer) (not $v.jwt.audience) }}
{{- fail "jwt.issuer and jwt.audience are required: the iss and aud the issuer's tokens carry (Better Auth: both the origin of BETTER_AUTH_URL); keybroker refuses to start without them. jwt.unpinned: true opts out, letting every token the issuer signs, for any service, open a user's key" }}
{{- end }}
{{- end }}
{{- if not $v.database.existingSecret }}
{{- fail "database.existingSecret is required: the Secret holding DATABASE_URL (a plain role's URL: no superuser, no BYPASSRLS)" }}
{{- end }}
{{- if not (has $v.kek.provider (list "secret" "awsKMS" "gcpKMS" "vaultTransit")) }}
{{- fail (printf "kek.provider %q: want one of secret, awsKMS, gcpKMS, vaultTransit" (toString $v.kek.provider)) }}
{{- end }}
{{- if not (regexMatch "^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$" (toString $v.kek.id)) }}
{{- fail "kek.id is required: 1-64 letters, digits, '.', '_', ':' or '-', recorded on every row the KEK wraps (env-v1 for a key taken over from mana-auth)" }}
{{- end }}
{{- if and (eq $v.kek.provider "secret") (not $v.kek.secret.existingSecret) }}
{{- fail "kek.secret.existingSecret is required with kek.provider secret: the Secret holding the KEK" }}
{{- end }}
{{- if and (eq $v.kek.provider "awsKMS") (not $v.kek.awsKMS.key) }}
{{- fail "kek.awsKMS.key is required with kek.provider awsKMS: alias/NAME, a key id or an ARN" }}
{{- end }}
{{- if and (eq $v.kek.provider "gcpKMS") (not $v.kek.gcpKMS.key) }}
{{- fail "kek.gcpKMS.key is required with kek.provider gcpKMS: projects/P/locations/L/keyRings/R/cryptoKeys/K" }}
{{- end }}
{{- if eq $v.kek.provider "vaultTransit" }}
{{- if or (not $v.kek.vaultTransit.key) (not $v.kek.vaultTransit.address) }}
{{- fail "kek.vaultTransit.key and kek.vaultTransit.address are required with kek.provider vaultTransit" }}
{{- end }}
{{- $auth := $v.kek.vaultTransit.auth }}
{{- if and (eq $auth.method "approle") (or (not $auth.approle.roleID) (not $auth.approle.secretIDSecret.name)) }}
{{- fail "kek.vaultTransit.auth.approle.roleID and .secretIDSecret.name are required with auth.method approle" }}
{{- end }}
{{- if and (eq $auth.method "token") (not $auth.token.secret.name) }}
{{- fail "kek.vaultTransit.auth.token.secret.name is required with auth.method token: the Secret holding VAULT_TOKEN" }}
{{- end }}
{{- end }}
{{- if hasKey $v.kek.params "id" }}
{{- fail "kek.params: set the KEK id in kek.id, not as a parameter" }}
{{- end }}
{{- $secretVars := include "keybroker.secretVariables" . | fromJsonArray }}
{{- $managed := include "keybroker.managedVariables" . | fromJsonArray }}
{{- range $name, $_ := $v.settings }}
{{- if or (has $name $managed) (has $name $secretVars) (not (regexMatch "^KEYBROKER_[A-Z0-9_]+$" $name)) }}
{{- fail (printf "settings.%s: settings takes plain KEYBROKER_* variables the chart does not set itself; secrets come from a Secret (extraEnv with valueFrom)" $name) }}
{{- end }}
{{- end }}
{{- $optional := include "keybroker.optionalSettings" . | fromJson }}
{{- if $v.grants.defaultKey.secretName }}{{ $_ := set $optional "MANA_AI_PUBLIC_KEY_PEM" "" }}{{ end }}
{{- if $v.grants.defaultKey.configMapName }}{{ $_ := set $optional "MANA_AI_PUBLIC_KEY_PEM" "" }}{{ end }}
{{- if $v.grants.recipients }}{{ $_ := set $optional "KEYBROKER_GRANT_RECIPIENTS" "" }}{{ end }}
{{- range $name, $_ := $optional }}
{{- if hasKey $v.settings $name }}
{{- fail (printf "settings.%s: the chart sets it from its audit, rollout or grants values; set one of them, not both" $name) }}
{{- end }}
{{- range $v.extraEnv }}
{{- if eq .name $name }}
{{- fail (printf "extraEnv %s: the chart sets it from its audit, rollout or grants values; set one of them, not both" $name) }}
{{- end }}
{{- end }}
{{- end }}
{{- $retention := $v.audit.retention }}
{{- if and (not (kindIs "string" $retention)) (not (kindIs "invalid" $retention)) (ne (toString $retention) "0") }}
{{- fail (printf "audit.retention %v: a duration with its unit, e.g. \"400d\", or 0 to keep every row" $retention) }}
{{- end }}
{{- $replicas := $v.rollout.replicas }}
{{- if and (kindIs "string" $replicas) (ne $replicas "replicaCount") }}
{{- fail (printf "rollout.replicas %q: a number, or replicaCount for the chart's replicaCount" $replicas) }}
{{- end }}
{{- if and $v.grants.defaultKey.secretName $v.grants.defaultKey.configMapName }}
{{- fail "grants.defaultKey: set secretName or configMapName, not both" }}
{{- end }}
{{- range $v.grants.recipients }}
{{- if not (regexMatch "^[a-z0-9._-]{1,63}$" (toString .name)) }}
{{- fail (printf "grants.recipients: name %q: 1-63 of a-z 0-9 . _ -" (toString .name)) }}
{{- end }}
{{- if eq (empty .secretName) (empty .configMapName) }}
{{- fail (printf "grants.recipients %s: set exactly one of secretName and configMapName" .name) }}
{{- end }}
{{- end }}
{{- range $v.extraEnv }}
{{- if has .name $managed }}
{{- fail (printf "extraEnv %s: the chart sets it from its values" .name) }}
{{- end }}
{{- if and (has .name $secretVars) (or .value (not .valueFrom)) }}
{{- fail (printf "extraEnv %s: a secret: take it from a Secret with valueFrom.secretKeyRef, not a value" .name) }}
{{- end }}
{{- end }}
{{- if eq (int $v.metrics.port) (int $v.containerPort) }}
{{- fail "metrics.port must differ from containerPort (0 serves /metrics on the API listener)" }}
{{- end }}
{{- $min := $v.podDisruptionBudget.minAvailable }}
{{- if and $v.podDisruptionBudget.enabled (not (kindIs "invalid" $min)) (not (kindIs "string" $min)) }}
{{- if ge (int $min) (int $v.replicaCount) }}
{{- fail "podDisruptionBudget.minAvailable must be below replicaCount: otherwise no node can be drained" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The active KEK's URI. */}}
{{- define "keybroker.kekURI" -}}
{{- $k := .Values.kek }}
{{- $params := dict }}
{{- $base := "" }}
{{- if eq $k.provider "secret" }}
{{- $base = printf "env://%s" $k.secret.variable }}
{{- else if eq $k.provider "awsKMS" }}
{{- $base = printf "awskms:///%s" $k.awsKMS.key }}
{{- if $k.awsKMS.region }}
{{- $_ := set $params "region" $k.awsKMS.region }}
{{- end }}
{{- else if eq $k.provider "gcpKMS" }}
{{- $base = printf "gcpkms://%s" $k.gcpKMS.key }}
{{- else if eq $k.provider "vaultTransit" }}
{{- $vt := $k.vaultTransit }}
{{- $base = printf "vault-transit://%s" $vt.key }}
{{- $_ := set $params "mount" $vt.mount }}
{{- $_ := set $params "auth" $vt.auth.method }}
{{- if eq $vt.auth.method "kubernetes" }}
{{- $_ := set $params "role" $vt.auth.kubernetes.role }}
{{- $_ := set $params "auth_mount" $vt.auth.kubernetes.mount }}
{{- $_ := set $params "jwt_file" (printf "%s/token" (include "keybroker.vaultTokenDir" .)) }}
{{- else if eq $vt.auth.method "approle" }}
{{- $_ := set $params "role_id" $vt.auth.approle.roleID }}
{{- $_ := set $params "auth_mount" $vt.auth.approle.mount }}
{{- $_ := set $params "secret_id_file" (printf "%s/secret-id" (include "keybroker.vaultAppRoleDir" .)) }}
{{- end }}
{{- end }}
{{- $params = merge $params $k.params }}
{{- $query := list (printf "id=%s" (urlquery $k.id)) }}
{{- range $name := keys $params | sortAlpha }}
{{- $query = append $query (printf "%s=%s" (urlquery $name) (urlquery (toString (get $params $name)) | replace "%2F" "/" | replace "%3A" ":")) }}
{{- end }}
{{- printf "%s?%s" $base (join "&" $query) }}
{{- end }}
