{{/* The chart's name, and the prefix of every object's name. */}}
{{- define "imaginghub.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "imaginghub.fullname" -}}
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

{{/* A component's object name: (dict "root" $ "component" "hub") */}}
{{- define "imaginghub.component" -}}
{{- printf "%s-%s" (include "imaginghub.fullname" .root) .component -}}
{{- end -}}

{{/* The labels every object gets; selector labels are the stable subset. */}}
{{- define "imaginghub.selectorLabels" -}}
app.kubernetes.io/name: {{ include "imaginghub.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "imaginghub.labels" -}}
{{ include "imaginghub.selectorLabels" . }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: imaginghub
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" }}
{{- end -}}

{{/* metadata: name, namespace, labels of a component's object */}}
{{- define "imaginghub.metadata" -}}
name: {{ include "imaginghub.component" . }}
namespace: {{ .root.Release.Namespace }}
labels:
  {{- include "imaginghub.labels" . | nindent 2 }}
{{- end -}}

{{- define "imaginghub.image" -}}
image: {{ printf "%s:%s" .name .tag | quote }}
imagePullPolicy: {{ .pullPolicy | default "IfNotPresent" }}
{{- end -}}

{{/* The pod-level settings every pod gets: pull secrets, scheduling, no token unless asked. */}}
{{- define "imaginghub.podCommon" -}}
{{- with .root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- range . }}
  - name: {{ . }}
  {{- end }}
{{- end }}
{{- with .scheduling }}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}
{{- end -}}

{{/* A container's security context: no root, no privilege escalation, no capabilities. */}}
{{- define "imaginghub.containerSecurity" -}}
securityContext:
  runAsNonRoot: true
  allowPrivilegeEscalation: false
  readOnlyRootFilesystem: false
  capabilities:
    drop: [ALL]
{{- end -}}

{{/* The Secret with the generated secrets (kept across upgrades). */}}
{{- define "imaginghub.secretName" -}}
{{- include "imaginghub.fullname" . -}}
{{- end -}}

{{/* The PostgreSQL server: host, port, user, and the Secret key of its password. */}}
{{- define "imaginghub.pgHost" -}}
{{- if eq .Values.postgresql.type "internal" -}}
{{- include "imaginghub.component" (dict "root" . "component" "postgresql") -}}
{{- else -}}
{{- required "postgresql.external.host is required with postgresql.type external" .Values.postgresql.external.host -}}
{{- end -}}
{{- end -}}

{{- define "imaginghub.pgPort" -}}
{{- if eq .Values.postgresql.type "internal" -}}5432{{- else -}}{{ .Values.postgresql.external.port | default 5432 }}{{- end -}}
{{- end -}}

{{- define "imaginghub.pgUser" -}}
{{- if eq .Values.postgresql.type "internal" -}}imaginghub{{- else -}}{{ .Values.postgresql.external.user | default "imaginghub" }}{{- end -}}
{{- end -}}

{{/* env var PGPASSWORD from the right Secret */}}
{{- define "imaginghub.pgPasswordEnv" -}}
- name: PGPASSWORD
  valueFrom:
    secretKeyRef:
      {{- if eq .Values.postgresql.type "internal" }}
      name: {{ include "imaginghub.secretName" . }}
      key: postgresql-password
      {{- else }}
      {{- $ref := required "postgresql.external.password is required with postgresql.type external" .Values.postgresql.external.password }}
      name: {{ $ref.name }}
      key: {{ $ref.key }}
      {{- end }}
{{- end -}}

{{/* The chart's configuration, read by the hub and the services (a checksum restarts them when it changes). */}}
{{- define "imaginghub.configChecksum" -}}
checksum/config: {{ include (print .Template.BasePath "/config-secret.yaml") . | sha256sum }}
{{- end -}}

{{/* NetworkPolicy peers */}}
{{- define "imaginghub.peer" -}}
- podSelector:
    matchLabels:
      app.kubernetes.io/name: {{ include "imaginghub.name" .root }}
      app.kubernetes.io/instance: {{ .root.Release.Name }}
      app.kubernetes.io/component: {{ .component }}
{{- end -}}
{{- define "imaginghub.userCode" -}}
- podSelector:
    matchLabels:
      imaginghub.org/instance: {{ .Release.Name }}
      imaginghub.org/user-code: "true"
{{- end -}}
{{- define "imaginghub.dns" -}}
- ports:
    {{- range .Values.networkPolicy.dnsPorts }}
    - {protocol: UDP, port: {{ . }}}
    - {protocol: TCP, port: {{ . }}}
    {{- end }}
{{- end -}}
