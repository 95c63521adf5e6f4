//go:build tools

// Package tools pins kustomize for the gitops tier (build.sh gitops compiles it): Argo CD's
// repo-server runs it to render a source that holds a kustomization.yaml.
package tools

import _ "sigs.k8s.io/kustomize/kustomize/v5"
