{{- /*
A hub service's Deployment, Service and volume: data, jobs, viewer. Called
with (dict "root" $ "component" NAME "spec" VALUES-SECTION "replicas" N
"storage" BOOL "env" LIST "serviceAccount" BOOL "files" LIST), each file
(dict "secret" NAME "key" KEY "path" FILE) a Secret's key mounted as a plain
file under /usr/local/etc/imaginghub/secrets (subPath: not a symlink). Each service is a
JupyterHub service that the hub does not start (it has a url and a token):
the JUPYTERHUB_* variables are what a managed service would get.
*/ -}}
{{- define "imaginghub.hubService" -}}
{{- $root := .root -}}
{{- $c := dict "root" .root "component" .component -}}
{{- $name := include "imaginghub.component" $c -}}
{{- if .storage }}
apiVersion: v1
kind: PersistentVolumeClaim
metadata:
  {{- include "imaginghub.metadata" $c | nindent 2 }}
  annotations:
    helm.sh/resource-policy: keep
spec:
  accessModes: [ReadWriteOnce]
  {{- with .spec.storage.storageClass }}
  storageClassName: {{ . }}
  {{- end }}
  resources:
    requests:
      storage: {{ .spec.storage.size }}
---
{{- end }}
apiVersion: apps/v1
kind: Deployment
metadata:
  {{- include "imaginghub.metadata" $c | nindent 2 }}
spec:
  replicas: {{ .replicas | default 1 }}
  {{- if .storage }}
  strategy:
    type: Recreate
  {{- end }}
  selector:
    matchLabels:
      {{- include "imaginghub.selectorLabels" $c | nindent 6 }}
  template:
    metadata:
      labels:
        {{- include "imaginghub.selectorLabels" $c | nindent 8 }}
        imaginghub.org/hub-api: "true"
      annotations:
        {{- include "imaginghub.configChecksum" $root | nindent 8 }}
    spec:
      {{- if .serviceAccount }}
      serviceAccountName: {{ $name }}
      {{- else }}
      automountServiceAccountToken: false
      {{- end }}
      securityContext:
        runAsUser: 1000
        runAsGroup: 1000
        fsGroup: 1000
      {{- include "imaginghub.podCommon" (dict "root" $root "scheduling" .spec.scheduling) | nindent 6 }}
      volumes:
        - name: config
          secret:
            secretName: {{ include "imaginghub.component" (dict "root" $root "component" "config") }}
            defaultMode: 0400
        - name: home
          {{- if .storage }}
          persistentVolumeClaim:
            claimName: {{ $name }}
          {{- else }}
          emptyDir: {}
          {{- end }}
        {{- range $i, $f := .files }}
        - name: {{ printf "file-%d" $i }}
          secret:
            secretName: {{ $f.secret }}
            defaultMode: 0400
        {{- end }}
      containers:
        - name: {{ .component }}
          {{- include "imaginghub.image" $root.Values.images.hub | nindent 10 }}
          command: [python3, -m, {{ printf "imaginghub.hub.services.%s" (.module | default .component) }}]
          {{- include "imaginghub.containerSecurity" $root | nindent 10 }}
          ports:
            - name: http
              containerPort: 8080
          env:
            - name: IMAGINGHUB_HOME
              value: /srv/imaginghub
            - name: IMAGINGHUB_CHART_VALUES
              value: /usr/local/etc/imaginghub/values.json
            - name: JUPYTERHUB_API_URL
              value: {{ printf "http://%s:8081/hub/api" (include "imaginghub.component" (dict "root" $root "component" "hub")) }}
            - name: JUPYTERHUB_API_TOKEN
              valueFrom: {secretKeyRef: {name: {{ include "imaginghub.secretName" $root }}, key: {{ printf "token-%s" .component }}}}
            - name: JUPYTERHUB_SERVICE_NAME
              value: {{ .component }}
            - name: JUPYTERHUB_SERVICE_URL
              value: http://0.0.0.0:8080
            - name: JUPYTERHUB_SERVICE_PREFIX
              value: {{ printf "/services/%s/" .component }}
            - name: JUPYTERHUB_BASE_URL
              value: /
            - name: JUPYTERHUB_CLIENT_ID
              value: {{ printf "service-%s" .component }}
            - name: JUPYTERHUB_OAUTH_CALLBACK_URL
              value: {{ printf "/services/%s/oauth_callback" .component }}
            - name: JUPYTERHUB_OAUTH_ACCESS_SCOPES
              value: {{ printf "[\"access:services!service=%s\"]" .component | quote }}
            {{- with .env }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          volumeMounts:
            - name: home
              mountPath: /srv/imaginghub
            - name: config
              mountPath: /srv/imaginghub/imaginghub_config.py
              subPath: imaginghub_config.py
              readOnly: true
            - name: config
              mountPath: /usr/local/etc/imaginghub/values.json
              subPath: values.json
              readOnly: true
            {{- range $i, $f := .files }}
            - name: {{ printf "file-%d" $i }}
              mountPath: {{ printf "/usr/local/etc/imaginghub/secrets/%s" $f.path }}
              subPath: {{ $f.key }}
              readOnly: true
            {{- end }}
          resources:
            {{- toYaml .spec.resources | nindent 12 }}
          readinessProbe:
            tcpSocket: {port: http}
            periodSeconds: 5
---
apiVersion: v1
kind: Service
metadata:
  {{- include "imaginghub.metadata" $c | nindent 2 }}
spec:
  type: ClusterIP
  selector:
    {{- include "imaginghub.selectorLabels" $c | nindent 4 }}
  ports:
    - name: http
      port: 8080
      targetPort: http
{{- end -}}

{{/* A PostgreSQL URL of one database for SQLAlchemy (the password comes from PGPASSWORD). */}}
{{- define "imaginghub.pgUrl" -}}
{{- printf "postgresql+psycopg://%s@%s:%s/imaginghub_%s" (include "imaginghub.pgUser" .root) (include "imaginghub.pgHost" .root) (include "imaginghub.pgPort" .root) .db -}}
{{- end -}}
