{{/* Chart name, possibly overridden. */}}
{{- define "warmgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Resource name: the release name (it already carries the color in blue/green installs). */}}
{{- define "warmgate.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "warmgate.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "warmgate.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{/* The name both colors share: the stable Service's name and the warmgate.dev/app label. */}}
{{- define "warmgate.appName" -}}
{{- if .Values.appName }}
{{- .Values.appName | trunc 55 | trimSuffix "-" }}
{{- else if .Values.color }}
{{- .Release.Name | trimSuffix (printf "-%s" .Values.color) | trunc 55 | trimSuffix "-" }}
{{- else }}
{{- include "warmgate.fullname" . | trunc 55 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "warmgate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Pod selector of this release's Deployment (immutable: never add to it). */}}
{{- define "warmgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "warmgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- if .Values.color }}
warmgate.dev/color: {{ .Values.color }}
{{- end }}
{{- end }}

{{/* Labels the Services select on, shared by both colors. */}}
{{- define "warmgate.appLabels" -}}
app.kubernetes.io/name: {{ include "warmgate.name" . }}
warmgate.dev/app: {{ include "warmgate.appName" . }}
{{- end }}

{{/* Labels of every object; the color only on those that belong to one color. */}}
{{- define "warmgate.commonLabels" -}}
helm.sh/chart: {{ include "warmgate.chart" . }}
app.kubernetes.io/name: {{ include "warmgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
warmgate.dev/app: {{ include "warmgate.appName" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: warmgate
{{- end }}

{{- define "warmgate.labels" -}}
{{ include "warmgate.commonLabels" . }}
{{- if .Values.color }}
warmgate.dev/color: {{ .Values.color }}
{{- end }}
{{- end }}

{{- define "warmgate.image" -}}
{{- $tag := .Values.image.tag | default (printf "%s%s" .Chart.AppVersion (ternary "-gpu" "" .Values.gpu.enabled)) -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ $tag }}
{{- end -}}
{{- end }}

{{- define "warmgate.serviceAccountName" -}}
{{- include "warmgate.fullname" . }}
{{- end }}

{{/* The effective warmup.yaml: the `warmup` values less chart-only keys, plus what the chart owns. */}}
{{- define "warmgate.config" -}}
{{- include "warmgate.requireSlo" . -}}
{{- $config := omit (deepCopy .Values.warmup) "startupBudgetSeconds" "allowNoSlo" -}}
{{- $probe := deepCopy (default (dict) $config.probe) -}}
{{- $_ := set $probe "port" (int .Values.probe.port) -}}
{{- $_ := set $probe "readiness_gate" (dict "enabled" .Values.readinessGate.enabled "condition_type" .Values.readinessGate.conditionType) -}}
{{- $_ := set $config "probe" $probe -}}
{{- $_ := set $config "state_dir" "/var/run/warmgate" -}}
{{- toYaml $config -}}
{{- end }}

{{/* startupProbe.failureThreshold: ceil(startupBudgetSeconds / periodSeconds). */}}
{{- define "warmgate.startupFailureThreshold" -}}
{{- $period := int .Values.probes.startup.periodSeconds -}}
{{- $budget := int .Values.warmup.startupBudgetSeconds -}}
{{- div (add $budget (sub $period 1)) $period -}}
{{- end }}

{{/* ceil(quiet + grace) + margin: the drain must finish before the kubelet sends SIGKILL. */}}
{{- define "warmgate.terminationGracePeriodSeconds" -}}
{{- $drain := default (dict) .Values.warmup.drain -}}
{{- $quiet := float64 (hasKey $drain "quiet_period_s" | ternary $drain.quiet_period_s 5) -}}
{{- $grace := float64 (hasKey $drain "grace_period_s" | ternary $drain.grace_period_s 20) -}}
{{- add (int (ceil (addf $quiet $grace))) (int .Values.terminationMarginSeconds) -}}
{{- end }}

{{- define "warmgate.quietPeriodSeconds" -}}
{{- $drain := default (dict) .Values.warmup.drain -}}
{{- int (ceil (float64 (hasKey $drain "quiet_period_s" | ternary $drain.quiet_period_s 5))) -}}
{{- end }}

{{/* A gate without a latency SLO judges warmth only: an overloaded replica passes it. The chart
     renders only with gate.p95_ms or gate.p99_ms set (an LLM service: gate.ttft_p95_ms or
     gate.itl_p95_ms; warmup.yaml refuses those without streamed prompt shapes), or with
     warmup.allowNoSlo saying so. */}}
{{- define "warmgate.requireSlo" -}}
{{- $gate := default (dict) .Values.warmup.gate -}}
{{- $slo := false -}}
{{- range $key := list "p95_ms" "p99_ms" "ttft_p95_ms" "itl_p95_ms" -}}
{{- if and (hasKey $gate $key) (not (kindIs "invalid" (index $gate $key))) -}}
{{- $slo = true -}}
{{- end -}}
{{- end -}}
{{- if not (or $slo .Values.warmup.allowNoSlo) -}}
{{- fail "warmup.gate has no latency SLO: set warmup.gate.p95_ms or warmup.gate.p99_ms (milliseconds, judged on the load test; for an LLM server warmup.gate.ttft_p95_ms or itl_p95_ms), or warmup.allowNoSlo: true to accept a gate that judges warmth only" -}}
{{- end -}}
{{- end }}
