#!/usr/bin/env bash
# Build the local control plane (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, kwok, helm) from the pinned Go modules under
# hack/tools/, into a cache outside the repo keyed by those pins. Also fetch
# KServe's CRDs from the pinned kserve module. Skips everything already there.
#
# Prints "kserve-crds=<dir>" and then the bin directory on its last line. Env:
#   SLIPWAY_CACHE   cache root (default ~/.cache/slipway)
#   SLIPWAY_TOOLS   space-separated subset to build (default: all)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${SLIPWAY_CACHE:-$HOME/.cache/slipway}
# shellcheck source=hack/versions.env
source "$here/versions.env"

key=$(cat "$here/versions.env" "$here"/tools/*/go.mod "$here"/tools/*/go.sum | sha256sum | cut -c1-16)
bin="$cache/bin/$key"
crds="$cache/kserve-crds/$KSERVE_VERSION"
mkdir -p "$bin" "$crds"

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

build() { # build <tooldir> <binary-name> <package> [ldflags]
  local dir=$1 name=$2 pkg=$3 ldflags=${4:--s -w}
  if [ -x "$bin/$name" ]; then return 0; fi
  echo ">> building $name ($pkg)" >&2
  local start=$SECONDS
  (cd "$here/tools/$dir" && CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$bin/$name.tmp" "$pkg")
  mv "$bin/$name.tmp" "$bin/$name"
  echo ">> built $name in $((SECONDS - start))s" >&2
}

want=${SLIPWAY_TOOLS:-"etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok helm"}
for t in $want; do
  case $t in
    etcd) build etcd etcd go.etcd.io/etcd/server/v3 ;;
    kube-apiserver|kube-controller-manager|kube-scheduler|kubectl)
      build kube "$t" "k8s.io/kubernetes/cmd/$t" "$kube_ldflags" ;;
    kwok) build kwok kwok sigs.k8s.io/kwok/cmd/kwok \
            "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION" ;;
    helm) build helm helm helm.sh/helm/v3/cmd/helm \
            "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" ;;
    *) echo "unknown tool $t" >&2; exit 2 ;;
  esac
done

if [ ! -f "$crds/serving.kserve.io_inferenceservices.yaml" ]; then
  echo ">> fetching KServe $KSERVE_VERSION CRDs" >&2
  dir=$(cd "$here/tools/kube" && GOFLAGS=-mod=mod go mod download -json "github.com/kserve/kserve@$KSERVE_VERSION" \
        | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  for f in inferenceservices servingruntimes clusterservingruntimes inferencegraphs; do
    cp "$dir/config/crd/full/serving.kserve.io_$f.yaml" "$crds/"
  done
  chmod u+w "$crds"/*.yaml
fi

echo "kserve-crds=$crds"
echo "$bin"
