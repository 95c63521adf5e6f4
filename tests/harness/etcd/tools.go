//go:build tools

// Package tools pins etcd's server command, which build.sh compiles into the etcd binary.
package tools

import _ "go.etcd.io/etcd/server/v3"
