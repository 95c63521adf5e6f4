#!/usr/bin/env bash
# Build (once) the gopher-lua runner for Argo CD health scripts and print its path.
#
# tests/harness/argocd-health/ is a tiny Go program on gopher-lua, the Lua interpreter Argo CD
# embeds, pinned to the version Argo CD v3.5 uses. It is compiled per (gopher-lua version, Go
# version) into the cache that build.sh and actionlint.sh share, from the Go module proxy.
#
# Environment: MNIST_TUNING_CACHE (default ${XDG_CACHE_HOME:-$HOME/.cache}/mnist-tuning), GO (default go).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/argocd-health"
cache="${MNIST_TUNING_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mnist-tuning}"
go_bin="${GO:-go}"

if ! command -v "$go_bin" >/dev/null; then
  echo "argocd-health.sh: Go is not installed; install Go >= 1.24 (https://go.dev/dl/)" >&2
  exit 1
fi
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=readonly
version="$(cd "$here" && "$go_bin" list -m -f '{{.Version}}' github.com/yuin/gopher-lua)"
sums="$(cksum <"$here/main.go" | cut -d' ' -f1)"
slot="$cache/bin/argocd-health-$version-$sums-$("$go_bin" env GOVERSION)"
if [ ! -x "$slot/argocd-health" ]; then
  mkdir -p "$slot"
  (cd "$here" && "$go_bin" build -trimpath -o "$slot/argocd-health" .)
fi
echo "$slot/argocd-health"
