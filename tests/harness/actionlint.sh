#!/usr/bin/env bash
# Lint GitHub Actions workflows with actionlint, built from the Go module proxy.
#
# actionlint's PyPI wrapper downloads a release binary from GitHub at install time; building the
# same tool from its Go module needs only the module proxy. The binary is cached per
# (actionlint version, Go version) outside the repository and reused when present.
#
# Usage: tests/harness/actionlint.sh WORKFLOW.yaml...
# Environment: MNIST_TUNING_CACHE (default ${XDG_CACHE_HOME:-$HOME/.cache}/mnist-tuning), GO (default go).
set -euo pipefail

version="v1.7.12"
cache="${MNIST_TUNING_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/mnist-tuning}"
go_bin="${GO:-go}"

if [ "$#" -eq 0 ]; then
  echo "actionlint.sh: name the workflow files to lint, e.g. .github/workflows/*.yaml" >&2
  exit 2
fi
if ! command -v "$go_bin" >/dev/null; then
  echo "actionlint.sh: Go is not installed; install Go >= 1.24 (https://go.dev/dl/) to build actionlint" >&2
  exit 1
fi

slot="$cache/bin/actionlint-$version-$("$go_bin" env GOVERSION)"
if [ ! -x "$slot/actionlint" ]; then
  mkdir -p "$slot"
  echo "actionlint.sh: building actionlint $version into $slot (once)" >&2
  GOTOOLCHAIN=local CGO_ENABLED=0 GOBIN="$slot" \
    "$go_bin" install "github.com/rhysd/actionlint/cmd/actionlint@$version"
fi

exec "$slot/actionlint" "$@"
