// Command build-k8s builds (or finds in the cache) the Kubernetes binaries
// weir's e2e tests use, so the one-off ~7 minute build can run as its own
// step, e.g. before `make test`:
//
//	go run ./e2e/kube/cmd/build-k8s
//
// It prints the paths of kube-apiserver, kube-proxy and kubectl. The cache
// directory is $WEIR_K8S_CACHE or ~/.cache/weir/k8s-<version>.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/weir-lb/weir/e2e/kube"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "build-k8s:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	dir, err := kube.CacheDir()
	if err != nil {
		return err
	}
	p, err := kube.Build(ctx, dir, os.Stderr)
	if err != nil {
		return err
	}
	for _, path := range []string{p.APIServer, p.KubeProxy, p.Kubectl} {
		fmt.Println(path)
	}
	return nil
}
