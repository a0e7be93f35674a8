# Weir. Targets that touch the kernel (test, bench, demo) need root.
SHELL := /bin/bash
GO ?= go
CLANG ?= clang-19
STRIP ?= llvm-strip-19
# -p 1: the privileged packages share the kernel (netns, XDP, cgroups) and
# two cores; running them one at a time keeps timing-sensitive e2e tests calm.
GOTEST_FLAGS ?= -count=1 -timeout 40m -p 1
BENCH ?= .
export CGO_ENABLED ?= 0

.PHONY: all build generate generate-check test bench bench-floor demo lint deps bpffs clean k8s-binaries

all: build

build:
	$(GO) build -o bin/weir ./cmd/weir

# Regenerates the BPF objects and their Go bindings with the pinned clang
# (the //go:generate lines name clang-19 and llvm-strip-19).
generate:
	$(GO) generate ./...

# Fails when the committed objects don't match their C sources.
generate-check: generate
	@if [ -n "$$(git status --porcelain -- '*.o' '*_bpfel.go')" ]; then \
		git status --porcelain -- '*.o' '*_bpfel.go'; \
		echo "generated BPF objects differ from the committed ones: run 'make generate' and commit"; \
		exit 1; \
	fi

# Installs what the tests and the demo need on a fresh Debian 12 machine
# (as root) and mounts bpffs. Cheap when everything is already there.
DEB_PKGS := clang-19 llvm-19 libbpf-dev linux-libc-dev iproute2 ethtool bpftool etcd-server openssl curl nftables iptables
deps:
	@missing=""; for p in $(DEB_PKGS); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -qq && apt-get install -y -qq $$missing >/dev/null; \
	fi
	@mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
	@command -v $(GO) >/dev/null || { echo "Go 1.26 is needed on PATH (see README)"; exit 1; }

bpffs:
	@mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf

# kube-apiserver, kube-proxy and kubectl v1.37.2 for the real-API-server
# tests, built from the Go module proxy into ~/.cache/weir (once; minutes).
k8s-binaries:
	$(GO) run ./e2e/kube/cmd/build-k8s

test: deps k8s-binaries
	$(GO) test $(GOTEST_FLAGS) ./...

bench: deps
	$(GO) test -run '^$$' -bench '$(BENCH)' -benchtime 1s ./...

demo: deps build
	./bin/weir demo

lint:
	$(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

# The floor programs (xdp/xdpbench/floor): the least any L4 load balancer
# does per packet, measured in the same harness as Weir (docs/BENCHMARKS.md,
# "The floor"). FLOOR_FLAGS narrows the run, e.g. --proto udp --runs 3;
# live: FLOOR_SCENARIOS=xdp-tx,established,new-flow FLOOR_FLAGS='--mode live --ip 4 --proto udp'.
FLOOR_SCENARIOS ?= noop,established,new-flow
FLOOR_FLAGS ?= --services 1 --ip 4 --proto udp,tcp
bench-floor: build
	@mkdir -p bin/floor
	@for p in floor_array floor_lookup floor_encap; do \
		$(CLANG) -O2 -g -Wall -Werror -mcpu=v3 -target bpf -I/usr/include/x86_64-linux-gnu \
			-c xdp/xdpbench/floor/$$p.c -o bin/floor/$$p.o || exit 1; \
	done
	./bin/weir bench xdp --scenarios $(FLOOR_SCENARIOS) $(FLOOR_FLAGS)
	@for p in floor_array floor_lookup floor_lookup_full floor_encap floor_encap_full; do \
		o=$${p%_full}; \
		./bin/weir bench xdp --object bin/floor/$$o.o --program $$p --scenarios $(FLOOR_SCENARIOS) $(FLOOR_FLAGS) || exit 1; \
	done

clean:
	rm -rf bin
