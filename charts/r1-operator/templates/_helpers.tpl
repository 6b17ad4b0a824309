{{/* Chart name, truncated to a DNS label. */}}
{{- define "r1-operator.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Release-qualified name. */}}
{{- define "r1-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "r1-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "r1-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The standard app.kubernetes.io labels on every object. */}}
{{- define "r1-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "r1-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: r1-operator
{{- end -}}

{{- define "r1-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "r1-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "r1-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "r1-operator.runtimeImage" -}}
{{- printf "%s:%s" .Values.runtime.image.repository (default .Chart.AppVersion .Values.runtime.image.tag) -}}
{{- end -}}

{{- define "r1-operator.runtimeGpuImage" -}}
{{- if .Values.runtime.gpuImage.repository -}}
{{- printf "%s:%s" .Values.runtime.gpuImage.repository (default (printf "%s-cuda" .Chart.AppVersion) .Values.runtime.gpuImage.tag) -}}
{{- end -}}
{{- end -}}

{{/* Watched namespaces without glob characters: where namespaced RBAC is granted. */}}
{{- define "r1-operator.exactNamespaces" -}}
{{- range .Values.watch.namespaces }}{{ if not (or (contains "*" .) (contains "?" .)) }}{{ . }} {{ end }}{{ end -}}
{{- end -}}
