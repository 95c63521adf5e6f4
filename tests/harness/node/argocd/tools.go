//go:build tools

// Package tools pins Argo CD for the gitops tier (build.sh gitops compiles it): its cmd
// package is every component in one binary (argocd, argocd-server, argocd-repo-server,
// argocd-application-controller, ...), chosen by the name it runs under (argv[0]) or by
// ARGOCD_BINARY_NAME.
package tools

import _ "github.com/argoproj/argo-cd/v3/cmd"
