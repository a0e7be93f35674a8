package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/spf13/pflag"
	"github.com/vishvananda/netlink"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"github.com/weir-lb/weir/lb"
	"github.com/weir-lb/weir/lb/k8s"
)

// kubeFlags adds the Kubernetes source's flags.
func kubeFlags(fs *pflag.FlagSet, o *agentOptions) {
	fs.StringVar(&o.kubeconfig, "kubeconfig", "", "kubeconfig file: serve the cluster's Services (in a pod, the in-cluster config is used when neither --config nor --kubeconfig is given)")
	fs.StringVar(&o.nodeName, "node-name", "", "this node's name in Kubernetes (default: the hostname, lowercased)")
	fs.StringSliceVar(&o.nodePortAddresses, "nodeport-addresses", nil, "CIDRs of the node addresses that NodePorts open on (as kube-proxy's); empty means all")
	fs.StringVar(&o.serviceProxyName, "service-proxy-name", "", "serve only Services whose service.kubernetes.io/service-proxy-name label has this value (empty: those without the label)")
}

// kubeSource reports whether the agent serves Kubernetes Services:
// --kubeconfig was given, or no --config was and the agent runs in a pod.
func (o *agentOptions) kubeSource() bool {
	return o.kubeconfig != "" || (o.config == "" && os.Getenv("KUBERNETES_SERVICE_HOST") != "")
}

// checkKubeFlags rejects conflicting sources and malformed Kubernetes
// flags before anything is attached, and fills in --node-name.
func checkKubeFlags(o *agentOptions) error {
	if o.config != "" && o.kubeconfig != "" {
		return errors.New("--config and --kubeconfig are two service sources: pass one (edge mode or Kubernetes)")
	}
	if _, err := parseNodePortAddresses(o.nodePortAddresses); err != nil {
		return err
	}
	if !o.kubeSource() || o.nodeName != "" {
		return nil
	}
	host, err := os.Hostname()
	if err != nil {
		return fmt.Errorf("--node-name not given and the hostname is unknown (%w): pass --node-name", err)
	}
	o.nodeName = strings.ToLower(strings.TrimSpace(host))
	return nil
}

// parseNodePortAddresses parses --nodeport-addresses.
func parseNodePortAddresses(cidrs []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, c := range cidrs {
		p, err := netip.ParsePrefix(strings.TrimSpace(c))
		if err != nil {
			return nil, fmt.Errorf("--nodeport-addresses %q: want CIDRs such as 10.0.0.0/8,fd00::/64: %w", c, err)
		}
		out = append(out, netip.PrefixFrom(p.Addr().Unmap(), p.Bits()).Masked())
	}
	return out, nil
}

// kubeRESTConfig is the client configuration: --kubeconfig, or the pod's
// service account.
func kubeRESTConfig(kubeconfig string) (*rest.Config, error) {
	var (
		cfg *rest.Config
		err error
	)
	if kubeconfig != "" {
		if cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfig); err != nil {
			return nil, fmt.Errorf("--kubeconfig %s: %w", kubeconfig, err)
		}
	} else if cfg, err = rest.InClusterConfig(); err != nil {
		return nil, fmt.Errorf("in-cluster Kubernetes config (KUBERNETES_SERVICE_HOST is set): %w; pass --kubeconfig, or --config for edge mode", err)
	}
	// The source only lists and watches; the limits matter for the
	// initial lists and relists. Protobuf halves the decoding cost.
	cfg.QPS, cfg.Burst = 20, 40
	cfg.UserAgent = "weir-agent"
	cfg.ContentType = "application/vnd.kubernetes.protobuf"
	cfg.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	return cfg, nil
}

// kubeSink hands the source's services to the reconciler and asks the
// runner for a sync. The first Replace is the source's full state: from
// then on a successful sync makes the agent healthy.
type kubeSink struct{ a *agent }

func (s kubeSink) Upsert(svc *lb.Service)     { s.a.rec.Upsert(svc) }
func (s kubeSink) Delete(name lb.ServiceName) { s.a.rec.Delete(name) }

// Request follows every batch of changes: it times them for the
// programming-latency metric and asks for a sync.
func (s kubeSink) Request() {
	s.a.status.metrics.changeQueued(time.Now())
	s.a.runner.Request()
}

func (s kubeSink) Replace(all []*lb.Service) {
	s.a.rec.Replace(all)
	s.a.sourceReady.Store(true)
}

// startKube starts the Kubernetes source, its health-check node ports and
// the watch on this node's addresses; all stop when ctx ends. The source's
// Run result goes to errc.
func (a *agent) startKube(ctx context.Context, errc chan<- error) error {
	cfg, err := kubeRESTConfig(a.opts.kubeconfig)
	if err != nil {
		return err
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return fmt.Errorf("kubernetes client for %s: %w", cfg.Host, err)
	}
	// client-go logs through klog; send it to the agent's log instead.
	klog.SetSlogLogger(a.log.With("component", "client-go"))
	mode, _ := lb.ParseMode(a.opts.lbMode) // checked by newAgent
	npa, _ := parseNodePortAddresses(a.opts.nodePortAddresses)

	hcs := newHCServers("", a.serviceProxyHealthy, a.log)
	addrs := &netlinkAddrs{log: a.log}
	src := k8s.NewSource(client, k8s.Options{
		NodeName:           a.opts.nodeName,
		DefaultMode:        mode,
		MaglevTableSize:    a.opts.maglevTableSize,
		NodePortAddresses:  npa,
		NodeAddrs:          addrs.list,
		ServiceProxyName:   a.opts.serviceProxyName,
		ResyncPeriod:       15 * time.Minute,
		OnHealthCheckPorts: hcs.update,
		OnChange:           func(c k8s.Change) { a.status.metrics.changeReceived(c, time.Now()) },
	}, kubeSink{a}, a.log)
	a.status.metrics.triggeredByKubernetes()

	a.status.mu.Lock()
	a.status.configErr = func() error {
		if !src.HasSynced() {
			return fmt.Errorf("kubernetes: waiting for the first list of services, endpoint slices and nodes from %s", cfg.Host)
		}
		return nil
	}
	a.status.nodeEligible = src.NodeEligible
	a.status.mu.Unlock()

	go func() { errc <- src.Run(ctx) }()
	go watchNodeAddrs(ctx, a.log, src.Refresh)
	go func() {
		// A health-check port that could not be bound is retried here,
		// as kube-proxy retries it on every sync.
		t := time.NewTicker(a.opts.syncPeriod)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				hcs.close()
				return
			case <-t.C:
				if src.HasSynced() {
					hcs.update(src.HealthCheckNodePorts())
				}
			}
		}
	}()
	a.log.Info("kubernetes source started", "api-server", cfg.Host, "node", a.opts.nodeName,
		"nodeport-addresses", a.opts.nodePortAddresses, "service-proxy-name", a.opts.serviceProxyName)
	return nil
}

// netlinkAddrs lists this network namespace's addresses, loopback
// included; on a netlink error it logs and keeps the last good list, so a
// transient failure doesn't drop every NodePort.
type netlinkAddrs struct {
	log  *slog.Logger
	mu   sync.Mutex
	last []netip.Addr
}

func (n *netlinkAddrs) list() []netip.Addr {
	n.mu.Lock()
	defer n.mu.Unlock()
	list, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		n.log.Warn("list node addresses for NodePorts failed; keeping the previous list", "err", err)
		return n.last
	}
	out := make([]netip.Addr, 0, len(list))
	for _, a := range list {
		if ip, ok := netip.AddrFromSlice(a.IP); ok {
			out = append(out, ip.Unmap())
		}
	}
	n.last = out
	return out
}

// watchNodeAddrs calls refresh whenever an address of this network
// namespace is added or removed, until ctx ends. A broken subscription is
// renewed, with a refresh for what changed in between.
func watchNodeAddrs(ctx context.Context, log *slog.Logger, refresh func()) {
	for ctx.Err() == nil {
		updates := make(chan netlink.AddrUpdate, 64)
		done := make(chan struct{})
		err := netlink.AddrSubscribeWithOptions(updates, done, netlink.AddrSubscribeOptions{
			ErrorCallback: func(err error) {
				if ctx.Err() == nil { // closing the socket at shutdown is no news
					log.Warn("node address updates", "err", err)
				}
			},
		})
		if err != nil {
			log.Warn("subscribe to node address updates failed; NodePort addresses follow only resyncs until it works", "err", err)
		} else {
			refresh()
			waitClosed(ctx, updates, refresh)
		}
		close(done)
		select {
		case <-ctx.Done():
		case <-time.After(5 * time.Second):
		}
	}
}

// waitClosed calls refresh for every update until the channel closes or
// ctx ends.
func waitClosed(ctx context.Context, updates <-chan netlink.AddrUpdate, refresh func()) {
	for {
		select {
		case <-ctx.Done():
			return
		case _, ok := <-updates:
			if !ok {
				return
			}
			refresh()
		}
	}
}
