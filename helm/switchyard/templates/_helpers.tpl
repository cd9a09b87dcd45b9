{{/*
Helpers shared by every template of the switchyard chart.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "switchyard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name: fullnameOverride, or "<release>-<chart>" (just the release name when it already contains the
chart name). Truncated to leave room for the "-worker-<group>" suffixes within 63 characters.
*/}}
{{- define "switchyard.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* "<chart>-<version>", for the helm.sh/chart label. */}}
{{- define "switchyard.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The labels that select this release's pods (never change them: selectors are immutable). */}}
{{- define "switchyard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "switchyard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The common labels of every resource. */}}
{{- define "switchyard.labels" -}}
helm.sh/chart: {{ include "switchyard.chart" . }}
{{ include "switchyard.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: switchyard
{{- end }}

{{/* The ServiceAccount the pods run as. */}}
{{- define "switchyard.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "switchyard.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* "repository:tag", or "repository:tag@digest" when image.digest pins it. */}}
{{- define "switchyard.image" -}}
{{- $image := printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- with .Values.image.digest }}
{{- $image = printf "%s@%s" $image . }}
{{- end }}
{{- $image }}
{{- end }}

{{/* The ConfigMap holding switchyard.yaml. */}}
{{- define "switchyard.configName" -}}
{{- printf "%s-config" (include "switchyard.fullname" .) }}
{{- end }}

{{/* The ConfigMap holding the workflow files (the chart's, or workflows.existingConfigMap). */}}
{{- define "switchyard.workflowsName" -}}
{{- default (printf "%s-workflows" (include "switchyard.fullname" .)) .Values.workflows.existingConfigMap }}
{{- end }}

{{/* The Deployment (and ScaledObject, HPA, PDB) name of a worker group: pass (list $ $group). */}}
{{- define "switchyard.workerName" -}}
{{- $root := index . 0 }}
{{- $group := index . 1 }}
{{- printf "%s-worker-%s" (include "switchyard.fullname" $root) $group.name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The worker groups with workerDefaults merged in (two levels deep: a group's `autoscaling: {enabled: true}` keeps
the default maxReplicas), as a YAML list, after checking each one: a valid name, no
name twice, at least one connector, and only connectors switchyard knows. Use it with fromYamlArray.
*/}}
{{- define "switchyard.workerGroups" -}}
{{- $known := list "http" "webhook" "salesforce" "mailchimp" "braze" }}
{{- $seen := dict }}
{{- $groups := list }}
{{- range $i, $group := .Values.workers }}
{{- if not $group.name }}
{{- fail (printf "workers[%d] needs a name" $i) }}
{{- end }}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$" $group.name) }}
{{- fail (printf "workers[%d].name %q: use lowercase letters, digits and '-'" $i $group.name) }}
{{- end }}
{{- if hasKey $seen $group.name }}
{{- fail (printf "workers: the name %q is used twice" $group.name) }}
{{- end }}
{{- $_ := set $seen $group.name true }}
{{- if not $group.connectors }}
{{- fail (printf "workers[%d] (%s) needs at least one connector" $i $group.name) }}
{{- end }}
{{- range $group.connectors }}
{{- if not (has . $known) }}
{{- fail (printf "workers[%d] (%s): unknown connector %q (known: %s)" $i $group.name . (join ", " $known)) }}
{{- end }}
{{- end }}
{{- /* Two-level merge by hand: sprig's mergeOverwrite ignores false and 0, so `enabled: false` in a
       group would not override a default of true. */}}
{{- $merged := deepCopy $.Values.workerDefaults }}
{{- range $key, $value := deepCopy $group }}
{{- if and (kindIs "map" $value) (kindIs "map" (get $merged $key)) }}
{{- $nested := get $merged $key }}
{{- range $nestedKey, $nestedValue := $value }}
{{- $_ := set $nested $nestedKey $nestedValue }}
{{- end }}
{{- else }}
{{- $_ := set $merged $key $value }}
{{- end }}
{{- end }}
{{- $groups = append $groups $merged }}
{{- end }}
{{- toYaml $groups }}
{{- end }}

{{/* terminationGracePeriodSeconds: preStop sleep + shutdown grace + margin, always above shutdown_grace. */}}
{{- define "switchyard.terminationGracePeriodSeconds" -}}
{{- add (int .Values.preStopSleepSeconds) (int .Values.shutdownGraceSeconds) (int .Values.terminationGraceExtraSeconds) }}
{{- end }}

{{/* Pod annotations that roll the pods when the configuration or the workflows change. */}}
{{- define "switchyard.checksums" -}}
{{- if .Values.rolloutOnConfigChange -}}
checksum/config: {{ include (print $.Template.BasePath "/configmap.yaml") . | sha256sum }}
{{- end }}
{{- end }}

{{/*
Every Deployment the release runs, as a YAML list (use it with fromYamlArray): the router (when enabled) and
one per worker group. Each entry has
  name        the Deployment's name (also of its PDB, HPA or ScaledObject)
  component   router | worker (the app.kubernetes.io/component label and the --role argument)
  group       the worker group's name ("" for the router)
  connectors  the worker group's connectors (empty for the router)
  queues      the queues it consumes, by their full names (what KEDA scales on)
  settings    router, or the worker group merged with workerDefaults (replicaCount, resources, autoscaling…)
*/}}
{{- define "switchyard.deployments" -}}
{{- $prefix := required "config.amqp.prefix is required" .Values.config.amqp.prefix -}}
{{- $list := list -}}
{{- if .Values.router.enabled -}}
{{- $router := dict "name" (printf "%s-router" (include "switchyard.fullname" .)) "component" "router" "group" "" "connectors" (list) "queues" (list (printf "%s.router" $prefix)) "settings" .Values.router -}}
{{- $list = append $list $router -}}
{{- end -}}
{{- range $group := include "switchyard.workerGroups" . | fromYamlArray -}}
{{- $queues := list -}}
{{- range $connector := $group.connectors -}}
{{- $queues = append $queues (printf "%s.action.%s" $prefix $connector) -}}
{{- end -}}
{{- $worker := dict "name" (include "switchyard.workerName" (list $ $group)) "component" "worker" "group" $group.name "connectors" $group.connectors "queues" $queues "settings" $group -}}
{{- $list = append $list $worker -}}
{{- end -}}
{{- if not $list -}}
{{- fail "nothing to run: enable the router or list at least one worker group in workers" -}}
{{- end -}}
{{- toYaml $list -}}
{{- end }}

{{/* The labels that tell one Deployment's pods from the others': pass a "switchyard.deployments" entry. */}}
{{- define "switchyard.componentLabels" -}}
app.kubernetes.io/component: {{ .component }}
{{- if .group }}
switchyard.io/worker-group: {{ .group | quote }}
{{- end }}
{{- end }}

{{/*
The alert rules of files/alerts.yml with their placeholders filled:
  @{Alert.key}       prometheusRule.alerts.<Alert>.<key> (thresholds and `for:` durations)
  @{targetSelector}  the label matchers of this release's scrape targets in `up`
  @{runbookBaseUrl}  where docs/runbooks/ is served
A placeholder left unfilled (a typo in values, or a key removed) fails the render.
*/}}
{{- define "switchyard.alertRules" -}}
{{- $rule := .Values.prometheusRule }}
{{- $rules := .Files.Get "files/alerts.yml" }}
{{- range $alert, $params := $rule.alerts }}
{{- range $key, $value := $params }}
{{- $rules = replace (printf "@{%s.%s}" $alert $key) (toString $value) $rules }}
{{- end }}
{{- end }}
{{- $selector := $rule.targetSelector | default (printf "namespace=%q, job=%q" .Release.Namespace (printf "%s-metrics" (include "switchyard.fullname" .))) }}
{{- $rules = replace "@{targetSelector}" $selector $rules }}
{{- $runbooks := $rule.runbookBaseUrl | default (printf "%s/blob/v%s/docs/runbooks/" (trimSuffix "/" .Chart.Home) .Chart.AppVersion) }}
{{- $rules = replace "@{runbookBaseUrl}" $runbooks $rules }}
{{- $left := regexFindAll "@\\{[^}]*\\}" $rules -1 | uniq }}
{{- if $left }}
{{- fail (printf "prometheusRule.alerts: no value for %s" (join ", " $left)) }}
{{- end }}
{{- $rules }}
{{- end }}

{{/* `{{ secrets.NAME }}` for a secret's name: how switchyard.yaml names a secret (the console's tokens). */}}
{{- define "switchyard.secretRef" -}}
{{ "{{" }} secrets.{{ . }} {{ "}}" }}
{{- end }}
