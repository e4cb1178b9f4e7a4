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

{{/* warmgate's image. The -gpu variant only where it runs the model server (mode entrypoint): in the
     other modes it runs the sidecar and the bundle copy, and your server image brings the GPU stack. */}}
{{- define "warmgate.image" -}}
{{- $gpu := and .Values.gpu.enabled (eq (include "warmgate.mode" .) "entrypoint") -}}
{{- $tag := .Values.image.tag | default (printf "%s%s" .Chart.AppVersion (ternary "-gpu" "" $gpu)) -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ $tag }}
{{- end -}}
{{- end }}

{{/* The model server's image in modes injected and sidecar (checked by warmgate.checkValues). */}}
{{- define "warmgate.serverImage" -}}
{{- $image := .Values.server.image -}}
{{- if $image.digest -}}
{{ $image.repository }}@{{ $image.digest }}
{{- else -}}
{{ $image.repository }}:{{ $image.tag }}
{{- end -}}
{{- end }}

{{- define "warmgate.mode" -}}
{{- .Values.mode | default "entrypoint" -}}
{{- end }}

{{- define "warmgate.serviceAccountName" -}}
{{- .Values.serviceAccount.name | default (include "warmgate.fullname" .) }}
{{- end }}

{{/* "true" when this release renders the ServiceAccount: asked for, or the readiness gate needs one
     and none is named. */}}
{{- define "warmgate.createServiceAccount" -}}
{{- if or .Values.serviceAccount.create (and .Values.readinessGate.enabled (not .Values.serviceAccount.name)) -}}
true
{{- end -}}
{{- end }}

{{/* "true" when the pods name a ServiceAccount (else the namespace's default, with no token). */}}
{{- define "warmgate.usesServiceAccount" -}}
{{- if or .Values.serviceAccount.create .Values.serviceAccount.name .Values.readinessGate.enabled -}}
true
{{- end -}}
{{- end }}

{{/* The chart's default warmup.server.command (values.yaml; tests keep the two equal). Mode sidecar
     accepts it as "not set": warmgate does not start the server there. */}}
{{- define "warmgate.defaultServerCommand" -}}
{{- list "warmgate" "serve" "--demo" "--host" "0.0.0.0" "--port" "8000" "--grpc-port" "8001" | toJson -}}
{{- end }}

{{/* The cache variables warmgate exports to the server it starts (warmgate/artifacts/environment.py:
     server_environment; tests/deploy/test_chart_modes.py keeps the two equal), "{cache}" standing
     for cache.mountPath. The chart sets them itself in mode sidecar, where warmgate starts nothing. */}}
{{- define "warmgate.runtimeCacheEnv" -}}
TORCHINDUCTOR_CACHE_DIR: "{cache}/torchinductor"
TORCHINDUCTOR_FX_GRAPH_CACHE: "1"
TORCHINDUCTOR_AUTOGRAD_CACHE: "1"
TRITON_CACHE_DIR: "{cache}/triton"
VLLM_CACHE_ROOT: "{cache}/vllm"
CUDA_CACHE_PATH: "{cache}/cuda"
CUDA_CACHE_MAXSIZE: "4294967296"
ORT_TENSORRT_ENGINE_CACHE_ENABLE: "1"
ORT_TENSORRT_CACHE_PATH: "{cache}/ort-tensorrt"
{{- end }}

{{/* An explicit setting (server.env, extraEnv) always wins, as when warmgate exports them. */}}
{{- define "warmgate.cacheEnv" -}}
{{- if .Values.cache.enabled }}
{{- $given := dict -}}
{{- range concat (default (list) .Values.extraEnv) (default (list) .Values.server.env) }}
{{- $_ := set $given .name true -}}
{{- end }}
# The compile/artifact cache volume (cache.*).
{{- if not (hasKey $given "WARMGATE_CACHE_DIR") }}
- name: WARMGATE_CACHE_DIR
  value: {{ .Values.cache.mountPath | quote }}
{{- end }}
{{- if eq (include "warmgate.mode" .) "sidecar" }}
{{- $root := trimSuffix "/" .Values.cache.mountPath }}
{{- range $name, $value := include "warmgate.runtimeCacheEnv" . | fromYaml }}
{{- if not (hasKey $given $name) }}
- name: {{ $name }}
  value: {{ replace "{cache}" $root $value | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}

{{/* Contradictions the schema cannot express, refused with a message that says what to change. */}}
{{- define "warmgate.checkValues" -}}
{{- $mode := include "warmgate.mode" . -}}
{{- $server := .Values.server -}}
{{- if eq $mode "entrypoint" -}}
{{- if $server.image.repository -}}
{{- fail "server.image is for modes injected and sidecar: in mode entrypoint the model container runs warmgate's image (image.*). Set mode: injected to run your server image with warmgate injected, or leave server.image.repository empty" -}}
{{- end -}}
{{- else -}}
{{- if not $server.image.repository -}}
{{- fail (printf "mode %s runs your server image: set server.image.repository (and a tag or digest)" $mode) -}}
{{- end -}}
{{- if not (or $server.image.tag $server.image.digest) -}}
{{- fail "server.image needs a tag or a digest (no implicit :latest for the model server)" -}}
{{- end -}}
{{- end -}}
{{- if ne $mode "sidecar" -}}
{{- if or $server.command $server.args -}}
{{- fail (printf "server.command and server.args are for mode sidecar only: in mode %s warmgate starts the server from warmup.server.command (the one place for its command); move it there" $mode) -}}
{{- end -}}
{{- if not (default (dict) .Values.warmup.server).command -}}
{{- fail (printf "mode %s: warmgate starts the server, so warmup.server.command must name it" $mode) -}}
{{- end -}}
{{- else -}}
{{- $given := (default (dict) .Values.warmup.server).command -}}
{{- $own := concat (default (list) $server.command) (default (list) $server.args) -}}
{{- if and $given (ne (toJson $given) (include "warmgate.defaultServerCommand" .)) (ne (toJson $given) (toJson $own)) -}}
{{- fail "mode sidecar: the kubelet starts the server with server.command/server.args (empty: the image's own ENTRYPOINT/CMD), and warmgate does not start it, so warmup.server.command is not used: move the command to server.command/server.args and set warmup.server.command to null" -}}
{{- end -}}
{{- end -}}
{{- $pdb := .Values.podDisruptionBudget -}}
{{- if $pdb.enabled -}}
{{- $min := and (hasKey $pdb "minAvailable") (not (kindIs "invalid" $pdb.minAvailable)) -}}
{{- $max := and (hasKey $pdb "maxUnavailable") (not (kindIs "invalid" $pdb.maxUnavailable)) -}}
{{- if eq $min $max -}}
{{- fail "podDisruptionBudget: set exactly one of minAvailable and maxUnavailable (the chart's default is maxUnavailable: 1; set it to null when you set minAvailable)" -}}
{{- end -}}
{{- end -}}
{{- end }}

{{/* The effective warmup.yaml: the `warmup` values less chart-only keys, plus what the chart owns. */}}
{{- define "warmgate.config" -}}
{{- include "warmgate.requireSlo" . -}}
{{- $config := omit (deepCopy .Values.warmup) "startupBudgetSeconds" "allowNoSlo" -}}
{{- if eq (include "warmgate.mode" .) "sidecar" -}}
{{- /* The kubelet starts the server (server.command/args); warmgate never does here. */ -}}
{{- $_ := set $config "server" (omit (default (dict) $config.server) "command") -}}
{{- end -}}
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
