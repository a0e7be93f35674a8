package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spf13/pflag"

	"github.com/weir-lb/weir/bpf"
	"github.com/weir-lb/weir/lb"
	"github.com/weir-lb/weir/lb/edge"
	"github.com/weir-lb/weir/lb/health"
	"github.com/weir-lb/weir/maglev"
	"github.com/weir-lb/weir/sockmap"
	"github.com/weir-lb/weir/xdp"
)

// agentOptions are the agent's flags.
type agentOptions struct {
	config             string
	devices            []string
	xdpMode            string
	bpfRoot            string
	lbMode             string
	maglevTableSize    uint32
	metricsBindAddress string
	healthzBindAddress string
	cgroupRoot         string
	hostNetnsOnly      bool
	skipCgroups        []string
	snatIPv4, snatIPv6 string
	snatPortRange      string
	minSyncPeriod      time.Duration
	syncPeriod         time.Duration
	mapSizes           bpf.MapSizes
	logLevel           string
	newFlowSample      uint32
	// The Kubernetes source (agent_k8s.go).
	kubeconfig        string
	nodeName          string
	nodePortAddresses []string
	serviceProxyName  string
	runtime           runtimeOptions // metrics_runtime.go
}

func agentFlags(o *agentOptions) *pflag.FlagSet {
	fs := pflag.NewFlagSet("agent", pflag.ContinueOnError)
	fs.StringVar(&o.config, "config", "", "edge-mode config file (YAML) of services and backends")
	fs.StringSliceVar(&o.devices, "devices", nil, "interfaces for the XDP load balancer and DSR decap: a list, 'auto' (devices with a default route) or 'none'; required with a service source")
	fs.StringVar(&o.xdpMode, "xdp-mode", "auto", "XDP attach mode: native, generic or auto (native, falling back to generic)")
	fs.StringVar(&o.bpfRoot, "bpf-root", "/sys/fs/bpf/weir", "bpffs directory for pinned maps and links (mounted as bpffs if nothing is)")
	fs.StringVar(&o.lbMode, "lb-mode", "dsr", "default north-south mode for services that don't set one: dsr, snat or hybrid")
	fs.Uint32Var(&o.maglevTableSize, "maglev-table-size", maglev.DefaultTableSize, "default Maglev table size (a prime from the allowed set)")
	fs.StringVar(&o.metricsBindAddress, "metrics-bind-address", "127.0.0.1:9963", "address of the Prometheus metrics server; empty disables it")
	fs.StringVar(&o.healthzBindAddress, "healthz-bind-address", "0.0.0.0:10256", "address of the /healthz and /readyz server; empty disables it")
	fs.StringVar(&o.cgroupRoot, "cgroup-root", "", "cgroup v2 directory for the east-west socket hooks, or 'auto' for the cgroup v2 mount; empty leaves the socket hooks off")
	fs.BoolVar(&o.hostNetnsOnly, "socket-lb-host-netns-only", false, "apply the socket hooks only to sockets of the agent's network namespace")
	fs.StringSliceVar(&o.skipCgroups, "socket-lb-skip-cgroups", nil, "cgroup v2 directories whose sockets the socket hooks leave alone (e.g. sidecar meshes)")
	fs.StringVar(&o.snatIPv4, "snat-ipv4", "", "IPv4 source address for SNAT mode (default: the first device's IPv4 address)")
	fs.StringVar(&o.snatIPv6, "snat-ipv6", "", "IPv6 source address for SNAT mode (default: the first device's global IPv6 address)")
	fs.StringVar(&o.snatPortRange, "snat-port-range", "auto", "SNAT source ports, MIN-MAX; 'auto': the ports outside the node's ephemeral range (net.ipv4.ip_local_port_range), the larger side, so SNAT flows never share a port with the node's own connections")
	fs.DurationVar(&o.minSyncPeriod, "min-sync-period", 10*time.Millisecond, "minimum time between two syncs of the maps (a sync of one change costs well under a millisecond)")
	fs.DurationVar(&o.syncPeriod, "sync-period", 30*time.Second, "period of the full resync of the maps")
	fs.Uint32Var(&o.mapSizes.Services, "bpf-map-services", 0, "capacity of the service maps (0: default 65536)")
	fs.Uint32Var(&o.mapSizes.Frontends, "bpf-map-frontends", 0, "capacity of the frontend map (0: default 65536)")
	fs.Uint32Var(&o.mapSizes.Backends, "bpf-map-backends", 0, "capacity of the backend maps (0: default 262144)")
	fs.Uint32Var(&o.mapSizes.SourceRanges, "bpf-map-source-ranges", 0, "capacity of the source-range trie (0: default 16384)")
	fs.Uint32Var(&o.mapSizes.CT, "bpf-map-ct", 0, "capacity of the connection-tracking map (0: default 524288)")
	fs.Uint32Var(&o.mapSizes.Affinity, "bpf-map-affinity", 0, "capacity of the session-affinity map (0: default 65536)")
	fs.Uint32Var(&o.mapSizes.SNAT, "bpf-map-snat", 0, "capacity of the SNAT map (0: default 262144)")
	fs.Uint32Var(&o.mapSizes.SockRevNat, "bpf-map-sock-revnat", 0, "capacity of the socket reverse-NAT map (0: default 262144)")
	fs.StringVar(&o.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.Uint32Var(&o.newFlowSample, "new-flow-sample", 0, "emit a new-flow event (for weir observe) for one new XDP flow in N; 0 emits none")
	kubeFlags(fs, o)
	runtimeFlags(fs, &o.runtime)
	return fs
}

func runAgent(ctx context.Context, args []string) error {
	var o agentOptions
	fs := agentFlags(&o)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %v", fs.Args())
	}
	logger, err := newLogger(o.logLevel)
	if err != nil {
		return err
	}
	if err := o.runtime.apply(logger, os.Getenv); err != nil {
		return err
	}
	a, err := newAgent(o, logger)
	if err != nil {
		return err
	}
	defer a.close()
	return a.run(ctx)
}

func newLogger(level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l})), nil
}

// agent is a running Weir node: maps, programs, the reconciler and its
// sources.
type agent struct {
	opts   agentOptions
	log    *slog.Logger
	maps   *bpf.Maps
	rec    *lb.Reconciler
	runner *lb.Runner
	xdp    *xdp.Program
	sock   *sockmap.Program
	health *health.Checker
	status *agentStatus
	neigh  *neighbors // nil without XDP devices
	// sourceReady: the service source delivered its first full state.
	sourceReady atomic.Bool
	// neighSynced: the next hops were resolved at least once (only the
	// runner's goroutine touches it).
	neighSynced bool
	// settled: the first complete programming is done and the runtime
	// settled (settleRuntime; the runner's goroutine only).
	settled bool

	mu      sync.Mutex
	desired []*lb.Service // from the source, before health overrides
}

func newAgent(o agentOptions, logger *slog.Logger) (*agent, error) {
	mode, err := lb.ParseMode(o.lbMode)
	if err != nil {
		return nil, fmt.Errorf("--lb-mode: %w", err)
	}
	if err := maglev.ValidTableSize(o.maglevTableSize); err != nil {
		return nil, fmt.Errorf("--maglev-table-size: %w", err)
	}
	devices, err := resolveDevices(o.devices)
	if err != nil {
		return nil, err
	}
	if err := checkKubeFlags(&o); err != nil {
		return nil, err
	}
	if (o.config != "" || o.kubeSource()) && devices == nil && o.cgroupRoot == "" {
		return nil, errors.New("a service source (--config, --kubeconfig or in-cluster) needs a datapath: pass --devices (interfaces for XDP) and/or --cgroup-root (socket hooks); use --devices none with --cgroup-root for socket hooks only")
	}
	if o.config == "" && !o.kubeSource() && devices == nil && o.cgroupRoot == "" {
		return nil, errors.New("nothing to do: pass --config (edge services) or --kubeconfig (Kubernetes) with --devices and/or --cgroup-root, or --devices alone for a DSR backend node")
	}
	_ = mode

	if err := bpf.EnsureBPFFS(o.bpfRoot); err != nil {
		return nil, err
	}
	maps, err := bpf.OpenMaps(o.bpfRoot, o.mapSizes)
	if err != nil {
		return nil, err
	}
	a := &agent{opts: o, log: logger, maps: maps, status: newAgentStatus()}
	a.status.linkCheck = a.checkLink
	ok := false
	defer func() {
		if !ok {
			a.close()
		}
	}()

	a.rec, err = lb.NewReconciler(bpf.NewDatapath(maps), lb.ReconcilerOptions{
		DefaultTableSize: o.maglevTableSize,
		Logger:           logger,
	})
	if err != nil {
		return nil, fmt.Errorf("restore state from %s: %w", o.bpfRoot, err)
	}
	a.runner = lb.NewRunner(a.sync, o.minSyncPeriod, o.syncPeriod)

	if len(devices) > 0 {
		if err := a.attachXDP(devices); err != nil {
			return nil, err
		}
	}
	if o.cgroupRoot != "" {
		if err := a.attachSocketLB(); err != nil {
			return nil, err
		}
	}
	ok = true
	return a, nil
}

// resolveDevices turns --devices into interface names; nil means none.
func resolveDevices(devs []string) ([]string, error) {
	switch {
	case len(devs) == 0:
		return nil, nil
	case len(devs) == 1 && devs[0] == "none":
		return nil, nil
	case len(devs) == 1 && devs[0] == "auto":
		return defaultRouteDevices()
	}
	for _, d := range devs {
		if d == "auto" || d == "none" {
			return nil, fmt.Errorf("--devices: %q can't be mixed with interface names", d)
		}
	}
	return devs, nil
}

func (a *agent) attachXDP(devices []string) error {
	snat4, snat6, err := snatAddrs(devices, a.opts.snatIPv4, a.opts.snatIPv6)
	if err != nil {
		return err
	}
	mode, err := xdp.ParseAttachMode(a.opts.xdpMode)
	if err != nil {
		return fmt.Errorf("--xdp-mode: %w", err)
	}
	ports, err := snatPortRange(a.opts.snatPortRange, readEphemeralPorts)
	if err != nil {
		return err
	}
	if ports.overlap != "" {
		a.log.Warn("the SNAT port range overlaps the node's ephemeral ports: a SNAT flow and a connection of the node to the same backend can share a source port", "snat-port-range", ports, "ephemeral", ports.overlap)
	}
	prog, err := xdp.Load(xdp.Config{Maps: a.maps, SNATv4: snat4, SNATv6: snat6, NewFlowSample: a.opts.newFlowSample,
		SNATPortMin: ports.min, SNATPortMax: ports.max})
	if err != nil {
		return err
	}
	a.xdp = prog
	addrs, err := nodeAddrs()
	if err != nil {
		return err
	}
	if err := prog.SetNodeAddrs(addrs); err != nil {
		return err
	}
	a.neigh = newNeighbors(a.log, devices)
	for _, d := range devices {
		if err := prog.Attach(d, mode); err != nil {
			a.status.setAttach("xdp/"+d, err)
			return err
		}
		a.status.setAttach("xdp/"+d, nil)
		a.log.Info("XDP attached", "device", d, "mode", a.opts.xdpMode)
	}
	return nil
}

func (a *agent) attachSocketLB() error {
	root, err := sockmap.ResolveCgroupRoot(a.opts.cgroupRoot)
	if err != nil {
		return fmt.Errorf("--cgroup-root: %w", err)
	}
	prog, err := sockmap.Load(sockmap.Config{Maps: a.maps, HostNetnsOnly: a.opts.hostNetnsOnly, SkipCgroups: a.opts.skipCgroups})
	if err != nil {
		return err
	}
	a.sock = prog
	if err := prog.Attach(root); err != nil {
		a.status.setAttach("sock/"+root, err)
		return err
	}
	a.status.setAttach("sock/"+root, nil)
	a.log.Info("socket hooks attached", "cgroup", root)
	return nil
}

func (a *agent) run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, 4)

	if a.opts.config != "" {
		mode, _ := lb.ParseMode(a.opts.lbMode)
		a.health = health.New(a.log, a.reapply)
		src := edge.NewSource(a.opts.config, edge.Defaults{Mode: mode, MaglevTableSize: a.opts.maglevTableSize}, a.setDesired, a.log)
		a.status.configErr = src.LastError
		// Run returns the first load's error: an agent must not start (and
		// prune the maps) on a broken config.
		go func() { errc <- src.Run(ctx) }()
	} else if a.opts.kubeSource() {
		if err := a.startKube(ctx, errc); err != nil {
			return err
		}
	} else {
		// A backend node with no service source: decap only. Services left
		// from an earlier run stay as they are.
		a.status.synced()
	}

	servers, err := a.startServers()
	if err != nil {
		return err
	}
	defer func() {
		for _, s := range servers {
			_ = s.Close()
		}
	}()
	go func() { a.runner.Run(ctx); errc <- nil }()
	a.runner.Request()
	a.log.Info("agent running", "bpf-root", a.opts.bpfRoot)

	select {
	case <-ctx.Done():
		a.log.Info("stopping; programs stay attached and keep serving", "bpf-root", a.opts.bpfRoot)
		return nil
	case err := <-errc:
		return err
	}
}

// setDesired receives a new service set from the source.
func (a *agent) setDesired(svcs []*lb.Service) {
	a.status.metrics.changeQueued(time.Now())
	a.mu.Lock()
	a.desired = svcs
	a.mu.Unlock()
	a.sourceReady.Store(true)
	if a.health != nil {
		a.health.Set(svcs)
	}
	a.reapply()
}

// reapply hands the source's services, with health-check overrides, to the
// reconciler and asks for a sync.
func (a *agent) reapply() {
	a.mu.Lock()
	svcs := a.desired
	a.mu.Unlock()
	if a.health != nil {
		svcs = a.health.Apply(svcs)
	}
	a.rec.Replace(svcs)
	a.runner.Request()
}

func (a *agent) sync() error {
	start := time.Now()
	// Healthy means the source's state is programmed, not merely that a
	// sync ran before the source delivered anything.
	ready := a.sourceReady.Load()
	restoreGC := func() {}
	if ready && !a.settled {
		restoreGC = relaxGCForFirstSync(os.Getenv)
	}
	res, err := a.rec.Sync()
	restoreGC()
	// An invalid or conflicting service waits for its source to change:
	// it is reported, but neither retried nor held against the node's
	// health (one bad Service must not drain a node from load balancers).
	retry := retryable(err)
	a.status.recordSync(time.Since(start), retry, ready)
	if err != nil && retry == nil {
		a.log.Warn("services not applied; the others are programmed", "err", err)
	}
	if retry != nil {
		a.log.Error("sync failed; will retry", "err", retry)
		return retry
	}
	if res.Again {
		a.runner.Request()
	}
	if ready && !res.Again && !a.settled {
		a.settled = true
		go settleRuntime(os.Getenv)
	}
	prog := a.status.metrics.applied(start, time.Now(), len(res.Updated)+len(res.Deleted))
	if res.Writes > 0 {
		a.log.Info("synced", "updated", len(res.Updated), "deleted", len(res.Deleted), "writes", res.Writes, "took", time.Since(start),
			"change-latency", prog.Change, "since-caches-synced", prog.Initial)
	}
	// After a restart nothing may be written, but the next hops still
	// need resolving once.
	if a.neigh != nil && (res.Writes > 0 || !a.neighSynced) {
		a.neigh.update(backendAddrs(a.rec.VisitDesired))
		a.neighSynced = true
	}
	return nil
}

func (a *agent) close() {
	if a.xdp != nil {
		_ = a.xdp.Close()
	}
	if a.sock != nil {
		_ = a.sock.Close()
	}
	if a.maps != nil {
		_ = a.maps.Close()
	}
}

// retryable keeps the errors of err that the reconciler will retry.
func retryable(err error) error {
	if err == nil {
		return nil
	}
	var joined interface{ Unwrap() []error }
	errs := []error{err}
	if errors.As(err, &joined) {
		errs = joined.Unwrap()
	}
	var keep []error
	for _, e := range errs {
		var se *lb.ServiceError
		if errors.As(e, &se) && !se.Retry {
			continue
		}
		keep = append(keep, e)
	}
	return errors.Join(keep...)
}

// agentStatus is what /healthz and /readyz report.
type agentStatus struct {
	mu        sync.Mutex
	attach    map[string]string // hook -> "" or error
	lastSync  time.Time
	syncErr   string
	hasSynced bool
	configErr func() error
	metrics   *syncMetrics
	// linkCheck checks a hook attached earlier (attachState); nil trusts
	// the attach results.
	linkCheck func(hook string) error
	// nodeEligible is the Kubernetes source's NodeEligible; nil without one.
	nodeEligible func() bool
}

func newAgentStatus() *agentStatus {
	return &agentStatus{attach: map[string]string{}, metrics: newSyncMetrics()}
}

func (s *agentStatus) setAttach(hook string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		s.attach[hook] = err.Error()
	} else {
		s.attach[hook] = ""
	}
}

func (s *agentStatus) synced() {
	s.mu.Lock()
	s.hasSynced = true
	s.lastSync = time.Now()
	s.mu.Unlock()
}

func (s *agentStatus) recordSync(d time.Duration, err error, sourceReady bool) {
	s.metrics.observe(d, err)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.lastSync = time.Now()
	if err != nil {
		s.syncErr = err.Error()
		return
	}
	s.syncErr = ""
	s.hasSynced = s.hasSynced || sourceReady
}

// problems lists what is wrong, empty when healthy.
func (s *agentStatus) problems() []string {
	attach := s.attachState()
	s.mu.Lock()
	defer s.mu.Unlock()
	var p []string
	for hook, e := range attach {
		if e != "" {
			p = append(p, fmt.Sprintf("%s not attached: %s", hook, e))
		}
	}
	if s.syncErr != "" {
		p = append(p, "last sync failed: "+s.syncErr)
	}
	if s.configErr != nil {
		if err := s.configErr(); err != nil {
			p = append(p, "config: "+err.Error())
		}
	}
	return p
}

func parseOptionalAddr(flag, s string, want4 bool) (netip.Addr, error) {
	if s == "" {
		return netip.Addr{}, nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil || a.Is4() != want4 {
		fam := "IPv6"
		if want4 {
			fam = "IPv4"
		}
		return netip.Addr{}, fmt.Errorf("--%s %q: want an %s address", flag, s, fam)
	}
	return a, nil
}
