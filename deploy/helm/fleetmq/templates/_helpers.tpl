{{- define "fleetmq.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "fleetmq.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "fleetmq.selector" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Every node's cluster address: 1=<pod-0>.<headless>.<ns>.svc.cluster.local:7070,... */}}
{{- define "fleetmq.peers" -}}
{{- $name := include "fleetmq.fullname" . -}}
{{- $peers := list -}}
{{- range $i := until (int .Values.replicas) -}}
{{- $peers = append $peers (printf "%d=%s-%d.%s-headless.%s.svc.cluster.local:7070" (add $i 1) $name $i $name $.Release.Namespace) -}}
{{- end -}}
{{- join "," $peers -}}
{{- end -}}

{{/* The [listeners.tls] table of a TLS or secure WebSocket listener. */}}
{{- define "fleetmq.tlsTable" -}}
[listeners.tls]
cert_file = "/etc/fleetmq/tls/tls.crt"
key_file = "/etc/fleetmq/tls/tls.key"
{{- if or .Values.tls.requireClientCert .Values.tls.cnAsUsername }}
client_ca_file = "/etc/fleetmq/tls/ca.crt"
require_client_cert = {{ .Values.tls.requireClientCert }}
cn_as_username = {{ .Values.tls.cnAsUsername }}
{{- end }}
{{- end -}}
