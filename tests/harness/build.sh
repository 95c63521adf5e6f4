#!/usr/bin/env bash
# Build the control-plane binaries the test tiers run against, from the Go module proxy.
# `build.sh node` also builds the single-node cluster's programs (tests/harness/node): kubelet,
# kube-scheduler, kube-proxy, CoreDNS, the pod sandbox's pause, and Katib's controller, DB
# manager, file metrics collector and goptuna suggestion service.
#
# Each component is compiled once per (component version, Go version) into a cache outside the
# repository, then copied into .cluster/bin/ (git-ignored). A warm run only copies.
# Katib's CRD manifests come from the same downloaded katib module into .cluster/crds/katib/.
#
# Environment: CLUSTER_DIR (default .cluster), MNIST_TUNING_CACHE (default
# ${XDG_CACHE_HOME:-$HOME/.cache}/mnist-tuning), GO (default go), BUILD_PARALLELISM (default 2).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cluster_dir="${CLUSTER_DIR:-$root/.cluster}"
case "$cluster_dir" in /*) ;; *) cluster_dir="$root/$cluster_dir" ;; esac
cache="${MNIST_TUNING_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mnist-tuning}"
go_bin="${GO:-go}"
jobs="${BUILD_PARALLELISM:-2}"
with_node=false
case "${1:-}" in
  node) with_node=true ;;
  "") ;;
  *) echo "usage: build.sh [node]" >&2; exit 2 ;;
esac

# The wrapper modules sit inside this repository; its git state is no part of the binaries.
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -mod=readonly -buildvcs=false"

if ! command -v "$go_bin" >/dev/null; then
  echo "build.sh: Go is not installed; install Go >= 1.24 (https://go.dev/dl/) and rerun make binaries" >&2
  exit 1
fi
go_version="$("$go_bin" env GOVERSION)"

# The version of module $2 that the wrapper module in directory $1 requires.
module_version() {
  (cd "$here/$1" && "$go_bin" list -m -f '{{.Version}}' "$2")
}

# build_component NAME WRAPPER_DIR VERSION LDFLAGS PACKAGE=OUTPUT...
# Compiles each PACKAGE into the cache slot NAME-VERSION-GOVERSION unless every OUTPUT is there.
build_component() {
  local name="$1" wrapper="$2" version="$3" ldflags="$4"
  shift 4
  local slot="$cache/bin/$name-$version-$go_version"
  local missing=()
  local pair
  for pair in "$@"; do
    [[ -x "$slot/${pair#*=}" ]] || missing+=("$pair")
  done
  if ((${#missing[@]})); then
    mkdir -p "$slot"
    for pair in "${missing[@]}"; do
      local pkg="${pair%%=*}" out="${pair#*=}"
      echo "build.sh: compiling $out ($name $version, $go_version); the first build takes minutes" >&2
      local timer=()
      [[ -x /usr/bin/time ]] && timer=(/usr/bin/time -f "build.sh: $out: %e s wall, %U s user, %M KiB peak")
      (cd "$here/$wrapper" &&
        "${timer[@]}" "$go_bin" build -p "$jobs" -trimpath -ldflags "-s -w $ldflags" \
          -o "$slot/$out.tmp" "$pkg")
      mv "$slot/$out.tmp" "$slot/$out"
    done
  fi
  mkdir -p "$cluster_dir/bin"
  for pair in "$@"; do
    install -m 0755 "$slot/${pair#*=}" "$cluster_dir/bin/${pair#*=}"
  done
}

k8s_version="$(module_version kubernetes k8s.io/kubernetes)"
k8s_minor="${k8s_version#v1.}"
k8s_minor="${k8s_minor%%.*}"
k8s_ldflags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  k8s_ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$k8s_minor"
  k8s_ldflags+=" -X $pkg.gitTreeState=clean"
done
k8s_commands=(kube-apiserver kube-controller-manager kubectl)
$with_node && k8s_commands+=(kubelet kube-scheduler kube-proxy)
k8s_pairs=()
for command in "${k8s_commands[@]}"; do k8s_pairs+=("k8s.io/kubernetes/cmd/$command=$command"); done
build_component kubernetes kubernetes "$k8s_version" "$k8s_ldflags" "${k8s_pairs[@]}"

if [[ -f "$here/etcd/go.mod" ]]; then
  etcd_version="$(module_version etcd go.etcd.io/etcd/server/v3)"
  build_component etcd etcd "$etcd_version" \
    "-X go.etcd.io/etcd/api/v3/version.GitSHA=$etcd_version" \
    go.etcd.io/etcd/server/v3=etcd
fi

if [[ -f "$here/katib-validate/go.mod" ]]; then
  katib_version="$(module_version katib-validate github.com/kubeflow/katib)"
  # `go list -m` does not download; on a fresh machine the module is not there yet.
  (cd "$here/katib-validate" && "$go_bin" mod download github.com/kubeflow/katib)
  katib_dir="$(cd "$here/katib-validate" && "$go_bin" list -m -f '{{.Dir}}' github.com/kubeflow/katib)"
  # The validator judges against the katib-config of Katib's standalone install, built in.
  katib_config="$katib_dir/manifests/v1beta1/installs/katib-standalone/katib-config.yaml"
  # The validator's own source is part of the key: editing main.go must rebuild it.
  src_hash="$(cat "$here/katib-validate/"*.go "$here/katib-validate/go.sum" "$katib_config" |
    sha256sum | cut -c1-12)"
  build_component katib-validate katib-validate "$katib_version-$src_hash" \
    "-X main.standaloneKatibConfig=$(base64 -w0 "$katib_config")" .=katib-validate
  rm -rf "$cluster_dir/crds/katib"
  mkdir -p "$cluster_dir/crds/katib"
  install -m 0644 "$katib_dir"/manifests/v1beta1/components/crd/{experiment,trial,suggestion}.yaml \
    "$cluster_dir/crds/katib/"
fi

if $with_node; then
  coredns_version="$(module_version node/coredns github.com/coredns/coredns)"
  build_component coredns node/coredns "$coredns_version" "" .=coredns
  pause_hash="$(sha256sum "$here/node/pause/"{main.go,go.mod} | sha256sum | cut -c1-12)"
  build_component pause node/pause "$pause_hash" "" .=pause
  katib_node_version="$(module_version node/katib-programs github.com/kubeflow/katib)"
  katib_cmd=github.com/kubeflow/katib/cmd
  build_component katib-node node/katib-programs "$katib_node_version" "" \
    "$katib_cmd/katib-controller/v1beta1=katib-controller" \
    "$katib_cmd/db-manager/v1beta1=katib-db-manager" \
    "$katib_cmd/metricscollector/v1beta1/file-metricscollector=file-metricscollector" \
    "$katib_cmd/suggestion/goptuna/v1beta1=goptuna-suggestion"
  # Katib's own install manifests, for tests/harness/node/katib.py's overlay.
  katib_node_dir="$(cd "$here/node/katib-programs" && "$go_bin" list -m -f '{{.Dir}}' github.com/kubeflow/katib)"
  rm -rf "$cluster_dir/katib"
  mkdir -p "$cluster_dir/katib/manifests"
  cp -r "$katib_node_dir/manifests/v1beta1" "$cluster_dir/katib/manifests/"
  chmod -R u+w "$cluster_dir/katib"
fi

echo "build.sh: binaries in $cluster_dir/bin" >&2
