{{/*
Named templates. Everything that builds the gateway container reads only .Values and .Release,
so the same templates serve this chart's own Deployment and, in sidecar mode, another chart's
pod: that chart passes (dict "Values" .Values.<alias> "Release" .Release). The chart name is
the literal "exact-gateway" (not .Chart.Name) so that names computed from another chart's
context match the names this chart gives its own resources (the Secret).
*/}}

{{- define "exact-gateway.name" -}}
{{- default "exact-gateway" .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "exact-gateway.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := include "exact-gateway.name" . }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Selector labels: stable across upgrades, so never the version. */}}
{{- define "exact-gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "exact-gateway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: proxy
{{- end }}

{{/* Recommended labels of every resource this chart renders (needs the chart's own context). */}}
{{- define "exact-gateway.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "exact-gateway.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: {{ .Values.partOf }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "exact-gateway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "exact-gateway.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "exact-gateway.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository .Values.image.tag }}
{{- end }}
{{- end }}

{{/* The Secret the client secret comes from, if any. */}}
{{- define "exact-gateway.secretName" -}}
{{- if .Values.secret.existingSecret }}
{{- .Values.secret.existingSecret }}
{{- else if and .Values.secret.create .Values.secret.clientSecret }}
{{- include "exact-gateway.fullname" . }}
{{- end }}
{{- end }}

{{- define "exact-gateway.secretFile" -}}
{{- printf "%s/client-secret" (trimSuffix "/" .Values.secret.mountPath) }}
{{- end }}

{{/* Seconds the gateway needs after SIGTERM: grace + drain, rounded up. */}}
{{- define "exact-gateway.drainBudget" -}}
{{- $s := .Values.settings }}
{{- $grace := 2.0 }}
{{- if not (kindIs "invalid" $s.shutdownGraceSeconds) }}{{ $grace = $s.shutdownGraceSeconds }}{{ end }}
{{- $drain := 20.0 }}
{{- if not (kindIs "invalid" $s.drainSeconds) }}{{ $drain = $s.drainSeconds }}{{ end }}
{{- ceil (addf $grace $drain) | int }}
{{- end }}

{{/*
terminationGracePeriodSeconds for a pod running the gateway: the configured value (refused
when it leaves no room for the drain), else max(30, drain budget + 5).
*/}}
{{- define "exact-gateway.terminationGracePeriodSeconds" -}}
{{- $budget := include "exact-gateway.drainBudget" . | int }}
{{- $given := .Values.terminationGracePeriodSeconds }}
{{- if kindIs "invalid" $given }}
{{- max 30 (add $budget 5) }}
{{- else if le (int $given) $budget }}
{{- fail (printf "terminationGracePeriodSeconds (%d) must exceed settings.shutdownGraceSeconds + settings.drainSeconds (%d s), or Kubernetes kills the gateway mid-drain" (int $given) $budget) }}
{{- else }}
{{- int $given }}
{{- end }}
{{- end }}

{{/* Configuration errors Kubernetes would only show as a crash-looping pod. */}}
{{- define "exact-gateway.validate" -}}
{{- $s := .Values.settings }}
{{- if not $s.environment }}
{{- fail "settings.environment is required: choose qa, production or sandbox (sandbox serves simulated data from the built-in simulator and is never chosen for you)" }}
{{- else if ne (toString $s.environment) "sandbox" }}
{{- if not $s.clientId }}
{{- fail (printf "settings.clientId is required when settings.environment is %s" $s.environment) }}
{{- end }}
{{- if not $s.scopes }}
{{- fail (printf "settings.scopes is required when settings.environment is %s" $s.environment) }}
{{- end }}
{{- if not (include "exact-gateway.secretName" .) }}
{{- fail (printf "a client secret is required when settings.environment is %s: set secret.existingSecret (recommended) or secret.clientSecret" $s.environment) }}
{{- end }}
{{- end }}
{{- if and .Values.secret.existingSecret .Values.secret.clientSecret }}
{{- fail "set secret.existingSecret or secret.clientSecret, not both" }}
{{- end }}
{{- if and .Values.redis.existingSecret (or $s.redisUrl $s.redisUrlFile) }}
{{- fail "set redis.existingSecret or settings.redisUrl/redisUrlFile, not both" }}
{{- end }}
{{- if and .Values.stateFile.enabled $s.stateFile }}
{{- fail "set stateFile.enabled or settings.stateFile, not both" }}
{{- end }}
{{- $ca := .Values.caBundle }}
{{- if and $ca.configMap $ca.secret }}
{{- fail "set caBundle.configMap or caBundle.secret, not both" }}
{{- end }}
{{- $proxy := .Values.egressProxy }}
{{- if and $proxy.url $proxy.existingSecret }}
{{- fail "set egressProxy.url or egressProxy.existingSecret, not both" }}
{{- end }}
{{- if contains "@" (toString $proxy.url) }}
{{- fail "egressProxy.url must not carry credentials (they would be readable in the pod spec): put the whole URL in a Secret and set egressProxy.existingSecret" }}
{{- end }}
{{- if and $proxy.url (not (regexMatch "^https?://([^/:@\\[\\]]+|\\[[0-9a-fA-F:.]+\\]):[0-9]+/?$" (toString $proxy.url))) }}
{{- fail "egressProxy.url must look like http://host:port" }}
{{- end }}
{{- $_ := include "exact-gateway.terminationGracePeriodSeconds" . }}
{{- end }}

{{/* One environment variable value: lists joined by spaces, whole numbers without exponent. */}}
{{- define "exact-gateway.envValue" -}}
{{- if kindIs "slice" . }}
{{- join " " . }}
{{- else if and (kindIs "float64" .) (eq (floor .) .) }}
{{- int64 . }}
{{- else }}
{{- toString . }}
{{- end }}
{{- end }}

{{/* The gateway's environment: only EXACT_GATEWAY_* variables that the gateway reads, and the
standard OTEL_* ones of tracing.* */}}
{{- define "exact-gateway.env" -}}
{{- $sidecar := eq (toString .Values.mode) "sidecar" -}}
- name: EXACT_GATEWAY_HOST
  value: {{ $sidecar | ternary "127.0.0.1" "0.0.0.0" | quote }}
- name: EXACT_GATEWAY_PORT
  value: {{ include "exact-gateway.envValue" .Values.ports.proxy | quote }}
- name: EXACT_GATEWAY_ADMIN_HOST
  value: "0.0.0.0"
- name: EXACT_GATEWAY_ADMIN_PORT
  value: {{ include "exact-gateway.envValue" .Values.ports.admin | quote }}
{{- if include "exact-gateway.secretName" . }}
- name: EXACT_GATEWAY_CLIENT_SECRET_FILE
  value: {{ include "exact-gateway.secretFile" . | quote }}
{{- end }}
{{- if include "exact-gateway.caBundleSource" . }}
- name: EXACT_GATEWAY_CA_BUNDLE_FILE
  value: {{ include "exact-gateway.caBundleFile" . | quote }}
{{- end }}
{{- if .Values.redis.existingSecret }}
- name: EXACT_GATEWAY_REDIS_URL_FILE
  value: {{ printf "%s/redis-url" (trimSuffix "/" .Values.redis.mountPath) | quote }}
{{- end }}
{{- if .Values.stateFile.enabled }}
- name: EXACT_GATEWAY_STATE_FILE
  value: {{ printf "%s/state.json" (trimSuffix "/" .Values.stateFile.mountPath) | quote }}
{{- end }}
{{- if .Values.egressProxy.existingSecret }}
- name: EXACT_GATEWAY_EGRESS_PROXY_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.egressProxy.existingSecret }}
      key: {{ .Values.egressProxy.key }}
{{- else if .Values.egressProxy.url }}
- name: EXACT_GATEWAY_EGRESS_PROXY_URL
  value: {{ .Values.egressProxy.url | quote }}
{{- end }}
{{- range $key, $value := .Values.settings }}
{{- if not (or (kindIs "invalid" $value) (and (kindIs "string" $value) (eq $value "")) (and (kindIs "slice" $value) (empty $value))) }}
- name: {{ printf "EXACT_GATEWAY_%s" (snakecase $key | upper) }}
  value: {{ include "exact-gateway.envValue" $value | quote }}
{{- end }}
{{- end }}
{{- include "exact-gateway.tracingEnv" . }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The standard OpenTelemetry variables for tracing.* (none at all when it is off). */}}
{{- define "exact-gateway.tracingEnv" -}}
{{- with .Values.tracing }}
{{- if .enabled }}
- name: OTEL_TRACES_EXPORTER
  value: "otlp"
{{- if .endpoint }}
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ .endpoint | quote }}
{{- end }}
- name: OTEL_SERVICE_NAME
  value: {{ .serviceName | quote }}
- name: OTEL_TRACES_SAMPLER
  value: "parentbased_traceidratio"
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ include "exact-gateway.envValue" .samplerRatio | quote }}
{{- with .resourceAttributes }}
{{- $pairs := list }}
{{- range $key, $value := . }}
{{- $pairs = append $pairs (printf "%s=%s" $key (toString $value)) }}
{{- end }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ join "," $pairs | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* "configMap" or "secret" when a CA bundle is configured, else nothing. */}}
{{- define "exact-gateway.caBundleSource" -}}
{{- if .Values.caBundle.configMap }}configMap{{ else if .Values.caBundle.secret }}secret{{ end }}
{{- end }}

{{- define "exact-gateway.caBundleFile" -}}
{{- printf "%s/ca-bundle.pem" (trimSuffix "/" .Values.caBundle.mountPath) }}
{{- end }}

{{/* The gateway container's volumeMounts items (possibly none). */}}
{{- define "exact-gateway.volumeMounts" -}}
{{- if include "exact-gateway.secretName" . }}
- name: {{ include "exact-gateway.volumeName" . }}
  mountPath: {{ .Values.secret.mountPath }}
  readOnly: true
{{- end }}
{{- if include "exact-gateway.caBundleSource" . }}
- name: exact-gateway-ca-bundle
  mountPath: {{ .Values.caBundle.mountPath }}
  readOnly: true
{{- end }}
{{- if .Values.redis.existingSecret }}
- name: exact-gateway-redis
  mountPath: {{ .Values.redis.mountPath }}
  readOnly: true
{{- end }}
{{- if .Values.stateFile.enabled }}
- name: exact-gateway-state
  mountPath: {{ .Values.stateFile.mountPath }}
{{- end }}
{{- with .Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "exact-gateway.volumeName" -}}
exact-gateway-secret
{{- end }}

{{/* Pod volumes the gateway container needs (a list, possibly empty). */}}
{{- define "exact-gateway.volumes" -}}
{{- with include "exact-gateway.secretName" . }}
{{- $mode := $.Values.secret.defaultMode }}
{{- if kindIs "invalid" $mode }}
{{- $mode = eq (toString $.Values.mode) "sidecar" | ternary 292 288 }}
{{- end -}}
- name: {{ include "exact-gateway.volumeName" $ }}
  secret:
    secretName: {{ . }}
    defaultMode: {{ int $mode }}
    items:
      - key: {{ $.Values.secret.key }}
        path: client-secret
{{- end }}
{{- with include "exact-gateway.caBundleSource" . }}
- name: exact-gateway-ca-bundle
  {{- if eq . "configMap" }}
  configMap:
    name: {{ $.Values.caBundle.configMap }}
  {{- else }}
  secret:
    secretName: {{ $.Values.caBundle.secret }}
  {{- end }}
    defaultMode: 292
    items:
      - key: {{ $.Values.caBundle.key }}
        path: ca-bundle.pem
{{- end }}
{{- with .Values.redis.existingSecret }}
- name: exact-gateway-redis
  secret:
    secretName: {{ . }}
    defaultMode: {{ eq (toString $.Values.mode) "sidecar" | ternary 292 288 }}
    items:
      - key: {{ $.Values.redis.key }}
        path: redis-url
{{- end }}
{{- if .Values.stateFile.enabled }}
- name: exact-gateway-state
  emptyDir:
    sizeLimit: {{ .Values.stateFile.sizeLimit }}
{{- end }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "exact-gateway.probe" -}}
{{- $timings := index . 0 }}
{{- $path := index . 1 -}}
httpGet:
  path: {{ $path }}
  port: admin
{{- toYaml $timings | nindent 0 }}
{{- end }}

{{/*
The gateway container, as one list item. In sidecar mode: loopback proxy, no proxy containerPort
(nothing outside the pod can reach it), restartPolicy Always when it is a native sidecar.
*/}}
{{- define "exact-gateway.container" -}}
{{- include "exact-gateway.validate" . -}}
{{- $sidecar := eq (toString .Values.mode) "sidecar" -}}
- name: {{ $sidecar | ternary .Values.sidecar.containerName "exact-gateway" }}
  image: {{ include "exact-gateway.image" . | quote }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  {{- if and $sidecar .Values.sidecar.native }}
  restartPolicy: Always
  {{- end }}
  args:
    - serve
  ports:
    {{- if not $sidecar }}
    - name: proxy
      containerPort: {{ .Values.ports.proxy }}
      protocol: TCP
    {{- end }}
    - name: admin
      containerPort: {{ .Values.ports.admin }}
      protocol: TCP
  env:
    {{- include "exact-gateway.env" . | nindent 4 }}
  {{- with .Values.envFrom }}
  envFrom:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with include "exact-gateway.volumeMounts" . }}
  volumeMounts:
    {{- . | nindent 4 }}
  {{- end }}
  startupProbe:
    {{- include "exact-gateway.probe" (list .Values.probes.startup "/readyz") | nindent 4 }}
  livenessProbe:
    {{- include "exact-gateway.probe" (list .Values.probes.liveness "/healthz") | nindent 4 }}
  {{- if or (not $sidecar) .Values.sidecar.readinessProbe }}
  readinessProbe:
    {{- include "exact-gateway.probe" (list .Values.probes.readiness "/readyz") | nindent 4 }}
  {{- end }}
  resources:
    {{- toYaml .Values.resources | nindent 4 }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
{{- end }}

{{/* ---- The sidecar API: what another chart includes in its pod template. ---------------- */}}

{{- define "exact-gateway.sidecar.requireMode" -}}
{{- if ne (toString .Values.mode) "sidecar" }}
{{- fail "the exact-gateway.sidecar.* templates need mode: sidecar in the values passed to them" }}
{{- end }}
{{- end }}

{{/* The gateway as a native sidecar: an initContainers item (nothing when sidecar.native is false). */}}
{{- define "exact-gateway.sidecar.initContainers" -}}
{{- include "exact-gateway.sidecar.requireMode" . }}
{{- if .Values.sidecar.native }}
{{- include "exact-gateway.container" . }}
{{- end }}
{{- end }}

{{/* The gateway as a regular container: a containers item (nothing when sidecar.native is true). */}}
{{- define "exact-gateway.sidecar.containers" -}}
{{- include "exact-gateway.sidecar.requireMode" . }}
{{- if not .Values.sidecar.native }}
{{- include "exact-gateway.container" . }}
{{- end }}
{{- end }}

{{/* Volumes items the sidecar needs: the client secret, the CA bundle, extraVolumes. */}}
{{- define "exact-gateway.sidecar.volumes" -}}
{{- include "exact-gateway.sidecar.requireMode" . }}
{{- include "exact-gateway.volumes" . }}
{{- end }}

{{/* Where the app container reaches the gateway: http://127.0.0.1:<ports.proxy>. */}}
{{- define "exact-gateway.sidecar.url" -}}
{{- printf "http://127.0.0.1:%s" (include "exact-gateway.envValue" .Values.ports.proxy) }}
{{- end }}

{{/* The pod label the sidecar-mode PodMonitor selects. */}}
{{- define "exact-gateway.sidecar.podLabels" -}}
exact-gateway-sidecar: {{ include "exact-gateway.fullname" . }}
{{- end }}

{{/*
The job label the alert rules select: prometheusRule.job, else the job of the enabled
monitor (both enabled must agree), else "exact-gateway" (your own scrape configuration).
*/}}
{{- define "exact-gateway.alertJob" -}}
{{- $service := and .Values.serviceMonitor.enabled (eq (toString .Values.mode) "standalone") }}
{{- $pod := .Values.podMonitor.enabled }}
{{- if .Values.prometheusRule.job }}
{{- .Values.prometheusRule.job }}
{{- else if and $service $pod (ne .Values.serviceMonitor.job .Values.podMonitor.job) }}
{{- fail (printf "serviceMonitor.job (%s) and podMonitor.job (%s) differ: set prometheusRule.job to the one the alert rules should select" .Values.serviceMonitor.job .Values.podMonitor.job) }}
{{- else if $service }}
{{- .Values.serviceMonitor.job }}
{{- else if $pod }}
{{- .Values.podMonitor.job }}
{{- else }}
{{- "exact-gateway" }}
{{- end }}
{{- end }}
