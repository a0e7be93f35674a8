// Package e2e holds Weir's end-to-end tests: the real weir binary, network
// namespaces as hosts, real packets between them, and (for the Kubernetes
// tests) a real API server. Every test removes the namespaces, links,
// processes and pins it made, also when it fails.
package e2e
