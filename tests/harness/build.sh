#!/usr/bin/env bash
# Build the control-plane binaries the test tiers run against, from the Go module proxy.
# `build.sh node` also builds the single-node cluster's programs (tests/harness/node): kubelet,
# kube-scheduler, kube-proxy, CoreDNS, the pod sandbox's pause, distribution's registry (the
# node's private registry), and Katib's controller, DB manager, file metrics collector and
# goptuna suggestion service. `build.sh gitops` builds all
# that plus the gitops tier's programs: Argo CD (one binary, every component), kustomize (Argo
# CD's repo-server runs it) and our loopback Git server (tests/harness/node/gitserver), and
# copies Argo CD's CRDs and base configuration from its module into .cluster/argocd/manifests/.
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
with_gitops=false
case "${1:-}" in
  node) with_node=true ;;
  gitops) with_node=true with_gitops=true ;;
  "") ;;
  *) echo "usage: build.sh [node|gitops]" >&2; exit 2 ;;
esac

# The wrapper modules sit inside this repository; its git state is no part of the binaries.
# Every build uses the installed Go, except Argo CD's (GOTOOLCHAIN set for that call alone).
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
# A call that builds with another toolchain sets both for itself alone:
#   GOTOOLCHAIN=goX.Y.Z go_version=goX.Y.Z build_component ...
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
  registry_version="$(module_version node/distribution github.com/distribution/distribution/v3)"
  build_component registry node/distribution "$registry_version" "" \
    github.com/distribution/distribution/v3/cmd/registry=registry
  katib_node_version="$(module_version node/katib-programs github.com/kubeflow/katib)"
  katib_cmd=github.com/kubeflow/katib/cmd
  build_component katib-node node/katib-programs "$katib_node_version" "" \
    "$katib_cmd/katib-controller/v1beta1=katib-controller" \
    "$katib_cmd/db-manager/v1beta1=katib-db-manager" \
    "$katib_cmd/metricscollector/v1beta1/file-metricscollector=file-metricscollector" \
    "$katib_cmd/suggestion/goptuna/v1beta1=goptuna-suggestion"
  # Katib's own install manifests, for tests/harness/node/katib.py's overlay, and its gRPC API,
  # which the stand-in suggestion service (tests/harness/katib_services) is generated from.
  katib_node_dir="$(cd "$here/node/katib-programs" && "$go_bin" list -m -f '{{.Dir}}' github.com/kubeflow/katib)"
  rm -rf "$cluster_dir/katib"
  mkdir -p "$cluster_dir/katib/manifests" "$cluster_dir/katib/proto"
  cp -r "$katib_node_dir/manifests/v1beta1" "$cluster_dir/katib/manifests/"
  cp "$katib_node_dir/pkg/apis/manager/v1beta1/api.proto" "$cluster_dir/katib/proto/"
  chmod -R u+w "$cluster_dir/katib"
fi

if $with_gitops; then
  # Argo CD's go.mod says go 1.27.0: it builds with this toolchain, which the Go command fetches
  # from the module proxy on first use. The slot is keyed on the Go version that toolchain
  # reports, so a different toolchain compiles afresh.
  argocd_toolchain=go1.27.3
  argocd_go_version="$(GOTOOLCHAIN=$argocd_toolchain "$go_bin" env GOVERSION)"
  argocd_version="$(GOTOOLCHAIN=$argocd_toolchain module_version node/argocd github.com/argoproj/argo-cd/v3)"
  # What Argo CD's release Makefile stamps, where this build knows it: the version (without the
  # v; it prints v3.6.2+unknown, no Git commit being known), the module's publication time from
  # the proxy as the build date, and the client-go version its kubectl code is.
  argocd_date="$(cd "$here/node/argocd" && GOTOOLCHAIN=$argocd_toolchain "$go_bin" list -m \
    -f '{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}' github.com/argoproj/argo-cd/v3)"
  argocd_kubectl="$(cd "$here/node/argocd" && GOTOOLCHAIN=$argocd_toolchain "$go_bin" list -m \
    -f '{{with .Replace}}{{.Version}}{{else}}{{.Version}}{{end}}' k8s.io/client-go)"
  argocd_ldflags="-X github.com/argoproj/argo-cd/v3/common.version=${argocd_version#v}"
  argocd_ldflags+=" -X github.com/argoproj/argo-cd/v3/common.buildDate=$argocd_date"
  argocd_ldflags+=" -X github.com/argoproj/argo-cd/v3/common.kubectlVersion=$argocd_kubectl"
  GOTOOLCHAIN=$argocd_toolchain go_version=$argocd_go_version \
    build_component argocd node/argocd "$argocd_version" "$argocd_ldflags" \
    github.com/argoproj/argo-cd/v3/cmd=argocd
  # Argo CD's CRDs and base configuration from the same module, for tests/harness/node/gitops.py
  # (downloaded first: a warm slot compiles nothing, so nothing else fetches the module).
  (cd "$here/node/argocd" &&
    GOTOOLCHAIN=$argocd_toolchain "$go_bin" mod download github.com/argoproj/argo-cd/v3)
  argocd_dir="$(cd "$here/node/argocd" && GOTOOLCHAIN=$argocd_toolchain "$go_bin" list -m \
    -f '{{.Dir}}' github.com/argoproj/argo-cd/v3)"
  rm -rf "$cluster_dir/argocd"
  mkdir -p "$cluster_dir/argocd/manifests"
  cp -r "$argocd_dir/manifests/"{crds,base} "$cluster_dir/argocd/manifests/"
  chmod -R u+w "$cluster_dir/argocd"
  kustomize_version="$(module_version node/kustomize sigs.k8s.io/kustomize/kustomize/v5)"
  build_component kustomize node/kustomize "$kustomize_version" "" \
    sigs.k8s.io/kustomize/kustomize/v5=kustomize
  gitserver_hash="$(sha256sum "$here/node/gitserver/"{main.go,go.mod} | sha256sum | cut -c1-12)"
  build_component gitserver node/gitserver "$gitserver_hash" "" .=gitserver
fi

echo "build.sh: binaries in $cluster_dir/bin" >&2
