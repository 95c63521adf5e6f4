//go:build tools

// Package tools pins Katib's Go programs that run on the node (build.sh node
// compiles them): the controller with its webhooks, the DB manager, the file
// metrics collector sidecar and the goptuna suggestion service.
package tools

import (
	_ "github.com/kubeflow/katib/cmd/db-manager/v1beta1"
	_ "github.com/kubeflow/katib/cmd/katib-controller/v1beta1"
	_ "github.com/kubeflow/katib/cmd/metricscollector/v1beta1/file-metricscollector"
	_ "github.com/kubeflow/katib/cmd/suggestion/goptuna/v1beta1"
)
