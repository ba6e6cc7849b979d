{{/*
Names, labels and the derived settings every template shares.
*/}}

{{/* The chart name (app.kubernetes.io/name), at most 63 characters. */}}
{{- define "fedkube.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The prefix of every object name: the release name, plus "-<chart>" unless the
release name already contains it. At most 40 characters so that suffixes such as
"-operator-storage" stay within the 63 of a DNS label.
*/}}
{{- define "fedkube.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* name-version, as the helm.sh/chart label wants it. */}}
{{- define "fedkube.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Labels of every object. Call with (dict "ctx" $ "component" "operator").
The components of the chart (operator, dashboard, s3, mongodb, rbac, tls, network,
monitoring, combiner for the PDB) never collide with the selectors the operator puts
on a job's children (name fedkube + instance <job> + component reducer/combiner/...):
those carry the job's name as instance and fedkube-operator as managed-by.
*/}}
{{- define "fedkube.labels" -}}
helm.sh/chart: {{ include "fedkube.chart" .ctx }}
{{ include "fedkube.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: fedkube
{{- end -}}

{{/* Selector labels (immutable in Deployments): name, instance, component. */}}
{{- define "fedkube.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fedkube.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* image references */}}
{{- define "fedkube.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "fedkube.clientImage" -}}
{{- printf "%s:%s" .Values.clientImage.repository (default .Chart.AppVersion .Values.clientImage.tag) -}}
{{- end -}}

{{/* ServiceAccount names */}}
{{- define "fedkube.operatorServiceAccount" -}}
{{- default (printf "%s-operator" (include "fedkube.fullname" .)) .Values.operator.serviceAccount.name -}}
{{- end -}}

{{- define "fedkube.dashboardServiceAccount" -}}
{{- default (printf "%s-dashboard" (include "fedkube.fullname" .)) .Values.dashboard.serviceAccount.name -}}
{{- end -}}

{{/*
Checks across values that the schema cannot word clearly. Included by the operator
Deployment, so every render runs them.
*/}}
{{- define "fedkube.validate" -}}
{{- if and (not .Values.rbac.clusterWide) (empty .Values.watch.namespaces) -}}
{{- fail "rbac.clusterWide is false: list the namespaces to serve in watch.namespaces" -}}
{{- end -}}
{{- if and .Values.dev.s3.enabled .Values.storage.s3.endpoint -}}
{{- fail "set either dev.s3.enabled or storage.s3.endpoint, not both" -}}
{{- end -}}
{{- if and .Values.dev.s3.enabled .Values.storage.s3.existingSecret -}}
{{- fail "dev.s3.enabled generates its own credentials: unset storage.s3.existingSecret" -}}
{{- end -}}
{{- if and .Values.storage.s3.endpoint (not .Values.storage.s3.existingSecret) -}}
{{- fail "storage.s3.endpoint needs storage.s3.existingSecret (a Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)" -}}
{{- end -}}
{{- if and .Values.storage.s3.existingSecret (not .Values.storage.s3.endpoint) (not .Values.dev.s3.enabled) -}}
{{- fail "storage.s3.existingSecret needs storage.s3.endpoint (HOST:PORT of the S3 store)" -}}
{{- end -}}
{{- if and .Values.dev.mongodb.enabled .Values.storage.mongodb.existingSecret -}}
{{- fail "set either dev.mongodb.enabled or storage.mongodb.existingSecret, not both" -}}
{{- end -}}
{{- if and .Values.tls.certManager.enabled .Values.tls.existingSecret -}}
{{- fail "set either tls.certManager.enabled or tls.existingSecret, not both" -}}
{{- end -}}
{{- if and .Values.tls.certManager.enabled (not .Values.tls.certManager.issuerRef.name) -}}
{{- fail "tls.certManager.enabled needs tls.certManager.issuerRef.name" -}}
{{- end -}}
{{- if and .Values.dashboard.namespace (not .Values.rbac.clusterWide) (not (has .Values.dashboard.namespace .Values.watch.namespaces)) -}}
{{- fail (printf "dashboard.namespace %q must be one of watch.namespaces in namespaced mode (its Role lives there)" .Values.dashboard.namespace) -}}
{{- end -}}
{{- end -}}

{{/* ---- storage: "true" or "" ---- */}}
{{- define "fedkube.s3.enabled" -}}
{{- if or .Values.dev.s3.enabled .Values.storage.s3.endpoint -}}true{{- end -}}
{{- end -}}

{{- define "fedkube.mongodb.enabled" -}}
{{- if or .Values.dev.mongodb.enabled .Values.storage.mongodb.existingSecret -}}true{{- end -}}
{{- end -}}

{{/* HOST:PORT of the S3 store as pods in the cluster reach it. */}}
{{- define "fedkube.s3.endpoint" -}}
{{- if .Values.dev.s3.enabled -}}
{{- printf "%s-s3.%s.svc:8333" (include "fedkube.fullname" .) .Release.Namespace -}}
{{- else -}}
{{- .Values.storage.s3.endpoint -}}
{{- end -}}
{{- end -}}

{{/* "true"/"false": HTTPS to the S3 store (the dev server is plain HTTP). */}}
{{- define "fedkube.s3.secure" -}}
{{- if .Values.dev.s3.enabled -}}false{{- else -}}{{ .Values.storage.s3.secure }}{{- end -}}
{{- end -}}

{{/* The Secret (release namespace) with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY. */}}
{{- define "fedkube.s3.secret" -}}
{{- if .Values.dev.s3.enabled -}}
{{- printf "%s-s3-credentials" (include "fedkube.fullname" .) -}}
{{- else -}}
{{- .Values.storage.s3.existingSecret -}}
{{- end -}}
{{- end -}}

{{/* The Secret (release namespace) whose key `uri` is the MongoDB URI. */}}
{{- define "fedkube.mongodb.secret" -}}
{{- if .Values.dev.mongodb.enabled -}}
{{- printf "%s-mongodb" (include "fedkube.fullname" .) -}}
{{- else -}}
{{- .Values.storage.mongodb.existingSecret -}}
{{- end -}}
{{- end -}}

{{/* The object store URI of the dashboard's --store. */}}
{{- define "fedkube.s3.uri" -}}
{{- printf "s3://%s?endpoint=%s&secure=%s" .Values.storage.s3.bucket (include "fedkube.s3.endpoint" .) (include "fedkube.s3.secure" .) -}}
{{- end -}}

{{/* ---- TLS ---- */}}
{{/* "true" when the combiners' TLS is on (cert-manager or an existing Secret). */}}
{{- define "fedkube.tls.enabled" -}}
{{- if or .Values.tls.certManager.enabled .Values.tls.existingSecret -}}true{{- end -}}
{{- end -}}

{{- define "fedkube.tls.secret" -}}
{{- default .Values.tls.secretName .Values.tls.existingSecret -}}
{{- end -}}

{{/*
JSON list of the namespaces that get per-namespace job objects (NetworkPolicy, PDB,
Certificate): jobNamespaces, else watch.namespaces in namespaced mode, else the
release namespace. Use: include "fedkube.jobNamespaces" . | fromJsonArray
*/}}
{{- define "fedkube.jobNamespaces" -}}
{{- if .Values.jobNamespaces -}}
{{- .Values.jobNamespaces | uniq | toJson -}}
{{- else if not .Values.rbac.clusterWide -}}
{{- .Values.watch.namespaces | uniq | toJson -}}
{{- else -}}
{{- list .Release.Namespace | toJson -}}
{{- end -}}
{{- end -}}

{{/* The namespace the dashboard lists FederatedJobs in ("" = all). */}}
{{- define "fedkube.dashboard.namespace" -}}
{{- if .Values.dashboard.namespace -}}
{{- .Values.dashboard.namespace -}}
{{- else if not .Values.rbac.clusterWide -}}
{{- first .Values.watch.namespaces -}}
{{- end -}}
{{- end -}}

{{/* ---- security contexts (the "restricted" Pod Security Standard) ---- */}}
{{- define "fedkube.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "fedkube.containerSecurityContext" -}}
runAsNonRoot: true
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
capabilities:
  drop:
    - ALL
{{- end -}}
