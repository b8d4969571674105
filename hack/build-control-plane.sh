#!/usr/bin/env bash
# Build the local platform from the pinned Go modules under hack/tools/ into a
# cache outside the repo: etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, kwok, helm, KServe's controller manager and
# Prometheus. Also fetch KServe's CRDs and inferenceservice-config from the
# pinned kserve module and the Gateway API CRDs from the gateway-api module.
# Skips everything already there (a warm run takes milliseconds).
#
# Each tool's cache key covers only versions.env and its own go.mod/go.sum, so
# adding or bumping one tool never rebuilds the others. Tools from different
# modules build in parallel (their downloads overlap with the compiles).
#
# On-demand peers (never in the default set; name them in SLIPWAY_TOOLS): kueue and
# training-operator (Kubeflow's, PyTorchJob). Asking for one also fetches its CRDs from its
# module and prints "kueue-crds=<dir>" / "training-operator-crds=<dir>".
#
# Prints "kserve-assets=<dir>", "gateway-crds=<dir>" and then the bin directory
# on its last line. Env:
#   SLIPWAY_CACHE   cache root (default ~/.cache/slipway)
#   SLIPWAY_TOOLS   space-separated subset to build (default: the platform, no peers)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${SLIPWAY_CACHE:-$HOME/.cache/slipway}
# shellcheck source=hack/versions.env
source "$here/versions.env"

bin="$cache/bin"
kserve_assets="$cache/kserve/$KSERVE_VERSION"
gateway_crds="$cache/gateway-api/$GATEWAY_API_VERSION"
mkdir -p "$bin" "$cache/logs"

major=${KUBE_VERSION#v}; major=${major%%.*}
minor=${KUBE_VERSION#v*.}; minor=${minor%%.*}
kube_ldflags="-s -w \
 -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION \
 -X k8s.io/component-base/version.gitMajor=$major \
 -X k8s.io/component-base/version.gitMinor=$minor \
 -X k8s.io/component-base/version.gitTreeState=clean \
 -X k8s.io/component-base/version.buildDate=2000-01-01T00:00:00Z \
 -X k8s.io/client-go/pkg/version.gitVersion=$KUBE_VERSION \
 -X k8s.io/client-go/pkg/version.gitMajor=$major \
 -X k8s.io/client-go/pkg/version.gitMinor=$minor"
prom_ldflags="-s -w \
 -X github.com/prometheus/common/version.Version=${PROMETHEUS_VERSION#v} \
 -X github.com/prometheus/common/version.Branch=slipway"

# The cached path of <binary> built from hack/tools/<dir>. The key leaves out the on-demand
# peers' part of versions.env, so adding or bumping a peer keeps every other key.
path_of() { # path_of <tooldir> <binary-name>
  local key
  key=$( (sed '/^# On-demand peers/,$d' "$here/versions.env"
          cat "$here/tools/$1/go.mod" "$here/tools/$1/go.sum") | sha256sum | cut -c1-12)
  echo "$bin/$2-$key"
}

build() { # build <tooldir> <binary-name> <package> [ldflags]
  local dir=$1 name=$2 pkg=$3 ldflags=${4:--s -w} out
  out=$(path_of "$dir" "$name")
  if [ -x "$out" ]; then return 0; fi
  echo ">> building $name ($pkg)" >&2
  # A name of this build's own: two builds of the same tool at once (a test building helm
  # while CI builds everything) each write their own file and the last rename wins.
  local start=$SECONDS tmp="$out.$BASHPID.tmp" log="$cache/logs/$name.$BASHPID.log"
  if ! (cd "$here/tools/$dir" && CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" \
          -tags "${TAGS:-}" -o "$tmp" "$pkg") >"$log" 2>&1; then
    mv -f "$log" "$cache/logs/$name.log"
    echo "!! building $name failed; tail of $cache/logs/$name.log:" >&2
    tail -n 30 "$cache/logs/$name.log" >&2
    rm -f "$tmp"
    return 1
  fi
  mv -f "$log" "$cache/logs/$name.log"
  mv -f "$tmp" "$out"
  echo ">> built $name in $((SECONDS - start))s" >&2
}

build_tool() { # build_tool <name>
  case $1 in
    etcd) build etcd etcd go.etcd.io/etcd/server/v3 ;;
    kube-apiserver|kube-controller-manager|kube-scheduler|kubectl)
      build kube "$1" "k8s.io/kubernetes/cmd/$1" "$kube_ldflags" ;;
    kwok) build kwok kwok sigs.k8s.io/kwok/cmd/kwok \
            "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION" ;;
    helm) build helm helm helm.sh/helm/v3/cmd/helm \
            "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" ;;
    kserve-manager) build kserve kserve-manager github.com/kserve/kserve/cmd/manager ;;
    prometheus) TAGS=remove_all_sd build prometheus prometheus \
                  github.com/prometheus/prometheus/cmd/prometheus "$prom_ldflags" ;;
    kueue) pinned kueue sigs.k8s.io/kueue "$KUEUE_VERSION"
           build kueue kueue sigs.k8s.io/kueue/cmd/kueue \
             "-s -w -X sigs.k8s.io/kueue/pkg/version.GitVersion=$KUEUE_VERSION" ;;
    training-operator)
      pinned training-operator github.com/kubeflow/training-operator "$TRAINING_OPERATOR_VERSION"
      build training-operator training-operator \
        github.com/kubeflow/training-operator/cmd/training-operator.v1 ;;
    *) echo "unknown tool $1" >&2; return 2 ;;
  esac
}

# A peer's go.mod must require the version versions.env names (its cache key is its go.mod).
pinned() { # pinned <tooldir> <module> <version>
  if ! grep -Eq "^[[:space:]]*(require[[:space:]]+)?$2 $3( |$)" "$here/tools/$1/go.mod"; then
    echo "!! hack/tools/$1/go.mod does not require $2 $3 (versions.env)" >&2
    return 1
  fi
}

module_dir() { # module_dir <module@version> [tooldir]: download it, print its directory
  (cd "$here/tools/${2:-kube}" && GOFLAGS=-mod=mod go mod download -json "$1" \
     | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
}

# CRDs of an on-demand peer, copied from its module into the cache (once per version).
fetch_peer_crds() { # fetch_peer_crds <tooldir> <module> <version> <dir in module> <dest>
  [ -f "$5/.done" ] && return 0
  echo ">> fetching $2 $3 CRDs" >&2
  local dir; dir=$(module_dir "$2@$3" "$1")
  mkdir -p "$5"
  cp "$dir/$4"/*.yaml "$5/"
  rm -f "$5/kustomization.yaml"
  chmod -R u+w "$5"
  touch "$5/.done"
}

fetch_assets() {
  # Bump the stamp name when the set of copied files changes.
  if [ ! -f "$kserve_assets/.done-2" ]; then
    echo ">> fetching KServe $KSERVE_VERSION CRDs and inferenceservice-config" >&2
    local dir; dir=$(module_dir "github.com/kserve/kserve@$KSERVE_VERSION")
    mkdir -p "$kserve_assets/crds"
    for f in inferenceservices servingruntimes clusterservingruntimes inferencegraphs \
             trainedmodels localmodelcaches clusterstoragecontainers; do
      cp "$dir/config/crd/full/serving.kserve.io_$f.yaml" "$kserve_assets/crds/"
    done
    cp "$dir/config/configmap/inferenceservice.yaml" "$kserve_assets/"
    cp "$dir/config/webhook/manifests.yaml" "$kserve_assets/webhooks.yaml"
    chmod -R u+w "$kserve_assets"
    touch "$kserve_assets/.done-2"
  fi
  if [ ! -f "$gateway_crds/.done" ]; then
    echo ">> fetching Gateway API $GATEWAY_API_VERSION CRDs" >&2
    local dir; dir=$(module_dir "sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION")
    mkdir -p "$gateway_crds"
    cp "$dir"/config/crd/standard/*.yaml "$gateway_crds/"
    chmod -R u+w "$gateway_crds"
    touch "$gateway_crds/.done"
  fi
}

want=${SLIPWAY_TOOLS:-"etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok helm kserve-manager prometheus"}
kueue_crds="$cache/kueue/$KUEUE_VERSION/crds"
training_operator_crds="$cache/training-operator/$TRAINING_OPERATOR_VERSION/crds"
# One job per module directory, run in parallel; tools of one module (kube) in sequence.
declare -A groups=()
for t in $want; do
  case $t in kube-*|kubectl) g=kube ;; *) g=$t ;; esac
  groups[$g]="${groups[$g]:-} $t"
done
pids=()
for g in "${!groups[@]}"; do
  ( for t in ${groups[$g]}; do build_tool "$t"; done ) &
  pids+=($!)
done
fetch_assets
for t in $want; do
  case $t in
    kueue) fetch_peer_crds kueue sigs.k8s.io/kueue "$KUEUE_VERSION" \
             config/components/crd/bases "$kueue_crds" ;;
    training-operator)
      fetch_peer_crds training-operator github.com/kubeflow/training-operator \
        "$TRAINING_OPERATOR_VERSION" manifests/base/crds "$training_operator_crds" ;;
  esac
done
fail=0
for p in "${pids[@]}"; do wait "$p" || fail=1; done
[ $fail -eq 0 ] || { echo "!! some tools failed to build" >&2; exit 1; }

# A directory of links named after each tool (for PATH), keyed by what they point
# at, so checkouts with different pins sharing one cache never see each other's.
targets=()
for t in $want; do
  case $t in
    etcd) d=etcd ;; kube-*|kubectl) d=kube ;; kserve-manager) d=kserve ;; *) d=$t ;;
  esac
  targets+=("$t=$(path_of "$d" "$t")")
done
links="$cache/bin/set-$(printf '%s\n' "${targets[@]}" | sha256sum | cut -c1-12)"
mkdir -p "$links"
for entry in "${targets[@]}"; do ln -sfn "${entry#*=}" "$links/${entry%%=*}"; done

echo "kserve-assets=$kserve_assets"
echo "gateway-crds=$gateway_crds"
for t in $want; do
  case $t in
    kueue) echo "kueue-crds=$kueue_crds" ;;
    training-operator) echo "training-operator-crds=$training_operator_crds" ;;
  esac
done
echo "$links"
