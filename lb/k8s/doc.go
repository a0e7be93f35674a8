// Package k8s is the Kubernetes service source: it watches Services,
// EndpointSlices (discovery.k8s.io/v1) and Nodes and turns them into
// lb.Services the way kube-proxy would program them.
//
// # Contract
//
// A Source delivers its output to a Sink. Run waits for the informers'
// caches, then calls Sink.Replace once with every service (which also tells
// the reconciler the desired state is complete, so it may prune what an
// earlier agent left), then, for every change, Sink.Upsert or Sink.Delete
// for exactly the lb.Services that changed, followed by one Sink.Request.
// An event that changes nothing (a resync, a status heartbeat, an
// unrelated annotation) makes no call. All Sink calls come from Run's
// goroutine, holding no lock of the Source (a Sink may call its methods),
// in a deterministic order: services sorted by name, frontends in a fixed
// order of kinds and backends sorted by address within a service.
//
// # Translation
//
// One lb.Service per service port and address family, named
// lb.ServiceName{Namespace, Name, Port: the port's name, IPv6: family}:
//
//   - spec.clusterIPs: a ClusterIP frontend, scope internal.
//   - spec.ports[].nodePort: a NodePort frontend, scope external, on every
//     address of this node (Options.NodeAddrs) of the family that
//     Options.NodePortAddresses allows (all when empty), except loopback
//     and IPv6 link-local; plus 127.0.0.1 or ::1 with scope internal when
//     NodePortAddresses is empty or contains it (served by the socket
//     hooks; kube-proxy's nftables mode does not serve localhost NodePorts).
//   - status.loadBalancer.ingress[].ip: LoadBalancer frontends, scope
//     external, except ingress points with ipMode Proxy (as kube-proxy).
//   - spec.externalIPs: ExternalIP frontends, scope external.
//
// Backends come from the service's EndpointSlices (label
// kubernetes.io/service-name) of the same address type, matching the port
// by name and protocol; an address in several slices counts once, a
// ready copy winning over a terminating one. Ready endpoints are
// BackendActive, serving and terminating ones BackendTerminating, the
// rest are left out. Backend.Tunnel is the InternalIP of the endpoint's
// node in the same family when the Node is known. Weight is 1, except
// under topology-aware routing: when every ready endpoint carries node
// (or zone) hints and at least one names this node (or its zone, label
// topology.kubernetes.io/zone), ready endpoints hinted elsewhere get
// weight 0: they take no new flows but keep their established ones.
// Local endpoints keep weight 1 when the service has a Local traffic
// policy, which ignores topology.
//
// externalTrafficPolicy Local (on an externally reachable service) sets
// ExternalLocal, internalTrafficPolicy Local sets InternalLocal,
// sessionAffinity ClientIP sets SessionAffinity (default 10800 s).
// spec.loadBalancerSourceRanges become SourceRanges of the family's half
// when it has a LoadBalancer frontend; a /0 means no restriction. As under
// kube-proxy they restrict the load-balancer IPs only, not the service's
// NodePorts or external IPs (lb.Service.SourceRanges), and the legacy
// annotation service.beta.kubernetes.io/load-balancer-source-ranges is
// ignored.
//
// Skipped: ExternalName and headless services (clusterIP None or the
// service.kubernetes.io/headless label), and services whose
// service.kubernetes.io/service-proxy-name label differs from
// Options.ServiceProxyName (a service without the label has the name "").
//
// Annotations weir.io/lb-mode (dsr, snat, hybrid) and
// weir.io/maglev-table-size override Options.DefaultMode and
// Options.MaglevTableSize; an invalid value is logged as a warning naming
// the service and the annotation, and the default is used.
//
// # Health checks
//
// A LoadBalancer service with externalTrafficPolicy Local and a
// healthCheckNodePort gets a HealthCheckPort: the port and the number of
// distinct ready local endpoint addresses, as kube-proxy counts them.
// HealthCheckNodePorts returns them; Options.OnHealthCheckPorts is called
// with them whenever they change.
//
// # Scale
//
// The informers' transforms (transform.go) keep only what translation
// reads, and the source remembers what it delivered by fingerprint
// (fingerprint.go), so at 10k services x 10 endpoints the source's own
// memory is about the trimmed caches. Options.OnChange reports, per
// batch, when its first event arrived and the slices'
// endpoints.kubernetes.io/last-change-trigger-time, for the agent's
// latency metrics.
//
// # Errors
//
// Run returns an error when the caches don't sync before ctx ends; it
// returns nil when ctx ends after that. Problems with single objects
// (unparsable addresses, bad annotations) never stop the source: the
// object's part is skipped and a warning names it.
package k8s
