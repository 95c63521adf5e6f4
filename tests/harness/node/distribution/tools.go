//go:build tools

// Package tools pins the distribution registry for the node (build.sh node compiles it): the
// authenticated TLS registry on loopback that trials pull their image from with a pull Secret.
package tools

import _ "github.com/distribution/distribution/v3/cmd/registry"
