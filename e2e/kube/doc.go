// Package kube is test-support code: a real Kubernetes control plane (etcd
// plus kube-apiserver) and the reference kube-proxy for weir's end-to-end
// tests. Tests must run against a real API server, not only client-go's fake
// clientset, and compare weir with what kube-proxy programs.
//
// # Binaries
//
// kube-apiserver, kube-proxy and kubectl (Version) are built from the Go
// module proxy through the separate module in e2e/kube/tools, which keeps
// the Kubernetes dependency tree out of weir's go.mod. They are cached
// outside the repository in $WEIR_K8S_CACHE, or ~/.cache/weir/k8s-<Version>,
// and built only when missing, under a file lock so parallel test packages
// build once. The first build takes about 7 minutes and 2.5 GB of RAM on
// two cores; pre-build so that cost shows up on its own, not inside a test's
// timeout:
//
//	go run ./e2e/kube/cmd/build-k8s
//
// etcd is Debian's /usr/bin/etcd (package etcd-server); kube-proxy needs nft
// (package nftables) or iptables (package iptables). `make deps` installs
// them.
//
// # Contract
//
//   - StartCluster starts etcd on free 127.0.0.1 ports and kube-apiserver on
//     Options.BindAddr (AlwaysAllow authorization, one admin bearer token),
//     waits for /readyz and returns a client and a kubeconfig. With
//     Options.ServiceCIDRs (DualStackServiceCIDRs) the cluster is
//     dual-stack; CreateNode takes an InternalIP per family, which is how
//     kube-proxy (dual-stack whenever the netns has IPv6) learns its
//     secondary family's node IP. Cleanup stops
//     the apiserver before etcd, processes are ended by PID only, and on
//     failure the ends of their logs are printed.
//   - A client inside a test network namespace cannot reach the host's
//     loopback: RootVeth links the root namespace to the test namespace with
//     a /30 of test addresses, and its root address is the BindAddr to use.
//   - RunKubeProxy runs kube-proxy inside a test namespace (nsenter --net,
//     nothing else shared with the host's rules) and cleans its rules up.
//   - NftServices / WaitNft read kube-proxy's nftables rules back as
//     frontend -> backends, the shape weir's own tests compare against.
//
// Everything fails the test (never skips) when a prerequisite is missing,
// except the root check in testutil.RequirePrivileged.
package kube
