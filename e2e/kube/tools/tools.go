//go:build tools

// Package k8stools pins the Kubernetes binaries weir's e2e harness builds
// (see ../doc.go). It is a separate module so the Kubernetes dependency tree
// never enters weir's own go.mod.
package k8stools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
