{{- define "slipway.name" -}}slipway{{- end -}}
{{- define "slipway.fullname" -}}{{ .Release.Name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- define "slipway.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}{{ default (include "slipway.fullname" .) .Values.serviceAccount.name }}{{- else -}}{{ default "default" .Values.serviceAccount.name }}{{- end -}}
{{- end -}}
{{- define "slipway.labels" -}}
app.kubernetes.io/name: {{ include "slipway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: slipway
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}
{{- define "slipway.selector" -}}
app.kubernetes.io/name: {{ include "slipway.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
{{/* Name of the cluster-scoped objects: the release name, plus the release namespace when
the release watches one namespace (several teams may install one release each). */}}
{{- define "slipway.clusterName" -}}
{{- if .Values.watchNamespace -}}
{{- printf "%s-%s" (include "slipway.fullname" .) .Release.Namespace | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- include "slipway.fullname" . -}}
{{- end -}}
{{- end -}}
{{/* "true" when the replicas elect a leader: leaderElection.enabled when it is a boolean,
else (null, the default) whether there is more than one replica. */}}
{{- define "slipway.leaderElection" -}}
{{- $enabled := .Values.leaderElection.enabled -}}
{{- if kindIs "bool" $enabled -}}
{{- if and (not $enabled) (gt (int .Values.replicaCount) 1) -}}
{{- fail "replicaCount > 1 needs leaderElection.enabled (true or null): two operators must never reconcile the same objects" -}}
{{- end -}}
{{- $enabled -}}
{{- else -}}
{{- gt (int .Values.replicaCount) 1 -}}
{{- end -}}
{{- end -}}
{{/* The rules on namespaced kinds: a ClusterRole's when the operator watches every
namespace, a Role's in watchNamespace otherwise. Exactly the verbs the operator uses. */}}
{{- define "slipway.namespacedRules" -}}
# Our resources: Kopf lists and watches them, the controllers read them fresh (get) and
# patch them (a Canary's handled action annotation); delete: a finished TrainingJob's TTL.
- apiGroups: [slipway.dev]
  resources: [trainingjobs, modeldeployments, canaries]
  verbs: [get, list, watch, patch]
- apiGroups: [slipway.dev]
  resources: [trainingjobs]
  verbs: [delete]
- apiGroups: [slipway.dev]
  resources: [trainingjobs/status, modeldeployments/status, canaries/status]
  verbs: [patch]
# Children carry ownerReferences with blockOwnerDeletion: true, which needs update on the
# owner's finalizers subresource where OwnerReferencesPermissionEnforcement is on (OpenShift).
- apiGroups: [slipway.dev]
  resources: [trainingjobs/finalizers, modeldeployments/finalizers, canaries/finalizers]
  verbs: [update]
# A TrainingJob's Jobs (replaced when the pod template changes) and headless Service
# (server-side apply: patch, and create when it is new); get: whose is a same-named one;
# list/watch: both are watched (by label) into the operator's caches.
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, watch, create, patch]
# Read-only: pod states (why a model server is not serving, a TrainingJob's workers).
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
# Kueue: a queued TrainingJob's Workload (why it waits; runPolicy.suspend holds it through
# spec.active). Harmless where Kueue is not installed.
- apiGroups: [kueue.x-k8s.io]
  resources: [workloads]
  verbs: [list, patch]
# delete: a Canary's canary InferenceService once the rollout ends.
- apiGroups: [serving.kserve.io]
  resources: [inferenceservices]
  verbs: [get, list, watch, create, patch, delete]
# A Canary's weighted split in Standard mode.
- apiGroups: [gateway.networking.k8s.io]
  resources: [httproutes]
  verbs: [get, create, patch, delete]
- apiGroups: [""]
  resources: [events]
  verbs: [create]
{{- end -}}
