package k8s

import (
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/utils/ptr"

	"github.com/weir-lb/weir/lb"
)

// nodes of the table tests: this node (node-a, zone z1) and another.
func testNodes() []runtime.Object {
	return []runtime.Object{
		nodeObj("node-a", "z1", "192.168.0.1", "fd00::1"),
		nodeObj("node-b", "z2", "192.168.0.2", "fd00::2"),
	}
}

const v4, v6 = discovery.AddressTypeIPv4, discovery.AddressTypeIPv6

// TestTranslate runs each case's objects through a Source and compares
// the initial Replace with the expected services.
func TestTranslate(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts Options
		objs []runtime.Object
		want string
		logs []string // substrings the log must contain
	}{
		{
			name: "cluster IP with backends on two nodes",
			objs: []runtime.Object{
				service("default", "web"),
				slice("default", "web", "web-1", v4, ports(port("http", 8080)),
					ep("10.1.0.2", onNode("node-b"), inZone("z2")),
					ep("10.1.0.1", onNode("node-a"), inZone("z1")),
					ep("10.1.0.3", onNode("node-unknown"))),
			},
			want: `
default/web:http mode=dsr
  fe 10.96.0.10:80/TCP internal ClusterIP
  be 10.1.0.1:8080 active w=1 node=node-a tunnel=192.168.0.1 zone=z1 local
  be 10.1.0.2:8080 active w=1 node=node-b tunnel=192.168.0.2 zone=z2
  be 10.1.0.3:8080 active w=1 node=node-unknown
`,
		},
		{
			name: "dual-stack becomes two halves, backends by address type",
			objs: []runtime.Object{
				service("default", "web", clusterIP("10.96.0.10", "fd00:96::10")),
				slice("default", "web", "web-v4", v4, ports(port("http", 8080)), ep("10.1.0.1", onNode("node-b"))),
				slice("default", "web", "web-v6", v6, ports(port("http", 8080)), ep("fd00:1::1", onNode("node-b"))),
			},
			want: `
default/web:http mode=dsr
  fe 10.96.0.10:80/TCP internal ClusterIP
  be 10.1.0.1:8080 active w=1 node=node-b tunnel=192.168.0.2
default/web:http (IPv6) mode=dsr
  fe [fd00:96::10]:80/TCP internal ClusterIP
  be [fd00:1::1]:8080 active w=1 node=node-b tunnel=fd00::2
`,
		},
		{
			name: "NodePort on every node address plus loopback",
			opts: Options{NodeAddrs: addrs("10.0.0.1", "127.0.0.1", "::1", "fe80::1", "2001:db8::1", "10.0.0.1")},
			objs: []runtime.Object{
				service("default", "np", svcType(v1.ServiceTypeNodePort), svcPorts(svcPort("http", 80, 30080, v1.ProtocolTCP))),
			},
			want: `
default/np:http mode=dsr
  fe 10.96.0.10:80/TCP internal ClusterIP
  fe 10.0.0.1:30080/TCP external NodePort
  fe 127.0.0.1:30080/TCP internal NodePort
`,
		},
		{
			name: "NodePort limited by nodeport-addresses, loopback not included",
			opts: Options{NodeAddrs: addrs("10.0.0.1", "192.168.5.5", "127.0.0.1"), NodePortAddresses: prefixes("10.0.0.0/8")},
			objs: []runtime.Object{
				service("default", "np", svcType(v1.ServiceTypeNodePort), svcPorts(svcPort("http", 80, 30080, v1.ProtocolTCP))),
			},
			want: `
default/np:http mode=dsr
  fe 10.96.0.10:80/TCP internal ClusterIP
  fe 10.0.0.1:30080/TCP external NodePort
`,
		},
		{
			name: "NodePort limited by nodeport-addresses that include loopback",
			opts: Options{NodeAddrs: addrs("10.0.0.1", "192.168.5.5", "127.0.0.1"), NodePortAddresses: prefixes("192.168.0.0/16", "127.0.0.0/8")},
			objs: []runtime.Object{
				service("default", "np", svcType(v1.ServiceTypeNodePort), svcPorts(svcPort("http", 80, 30080, v1.ProtocolTCP))),
			},
			want: `
default/np:http mode=dsr
  fe 10.96.0.10:80/TCP internal ClusterIP
  fe 192.168.5.5:30080/TCP external NodePort
  fe 127.0.0.1:30080/TCP internal NodePort
`,
		},
		{
			name: "LoadBalancer: VIP ingress IPs, external IPs, source ranges per family",
			opts: Options{NodeAddrs: addrs("10.0.0.1")},
			objs: []runtime.Object{
				service("default", "lb", svcType(v1.ServiceTypeLoadBalancer),
					svcPorts(svcPort("http", 80, 30080, v1.ProtocolTCP)),
					lbIngress(
						v1.LoadBalancerIngress{IP: "203.0.113.10"},
						v1.LoadBalancerIngress{IP: "203.0.113.11", IPMode: ptr.To(v1.LoadBalancerIPModeProxy)},
						v1.LoadBalancerIngress{IP: "203.0.113.12", IPMode: ptr.To(v1.LoadBalancerIPModeVIP)},
						v1.LoadBalancerIngress{Hostname: "lb.example.com"}),
					func(s *v1.Service) {
						s.Spec.ExternalIPs = []string{"198.51.100.7", "2001:db8::7"}
						s.Spec.LoadBalancerSourceRanges = []string{" 203.0.113.0/24", "2001:db8::/32", "10.0.0.0/8", "bogus"}
					}),
			},
			want: `
default/lb:http mode=dsr ranges=[10.0.0.0/8 203.0.113.0/24]
  fe 10.96.0.10:80/TCP internal ClusterIP
  fe 203.0.113.10:80/TCP external LoadBalancer
  fe 203.0.113.12:80/TCP external LoadBalancer
  fe 198.51.100.7:80/TCP external ExternalIP
  fe 10.0.0.1:30080/TCP external NodePort
  fe 127.0.0.1:30080/TCP internal NodePort
`,
			logs: []string{`spec.loadBalancerSourceRanges: \"bogus\" is not a CIDR`},
		},
		{
			name: "source ranges: the legacy annotation is ignored, as kube-proxy does; /0 allows all",
			objs: []runtime.Object{
				service("default", "annotated", svcType(v1.ServiceTypeLoadBalancer), clusterIP("10.96.0.11"),
					svcPorts(svcPort("http", 80, 0, v1.ProtocolTCP)),
					lbIngress(v1.LoadBalancerIngress{IP: "203.0.113.10"}),
					annotated(annotationLegacySourceRanges, "192.0.2.0/24, 198.51.100.1/24")),
				service("default", "open", svcType(v1.ServiceTypeLoadBalancer), clusterIP("10.96.0.12"),
					svcPorts(svcPort("http", 80, 0, v1.ProtocolTCP)),
					lbIngress(v1.LoadBalancerIngress{IP: "203.0.113.11"}),
					func(s *v1.Service) { s.Spec.LoadBalancerSourceRanges = []string{"192.0.2.0/24", "0.0.0.0/0"} }),
				service("default", "pending", svcType(v1.ServiceTypeLoadBalancer), clusterIP("10.96.0.13"),
					svcPorts(svcPort("http", 80, 0, v1.ProtocolTCP)),
					func(s *v1.Service) { s.Spec.LoadBalancerSourceRanges = []string{"192.0.2.0/24"} }),
			},
			want: `
default/annotated:http mode=dsr
  fe 10.96.0.11:80/TCP internal ClusterIP
  fe 203.0.113.10:80/TCP external LoadBalancer
default/open:http mode=dsr
  fe 10.96.0.12:80/TCP internal ClusterIP
  fe 203.0.113.11:80/TCP external LoadBalancer
default/pending:http mode=dsr
  fe 10.96.0.13:80/TCP internal ClusterIP
`,
		},
		{
			name: "ports match by name and protocol; named target ports resolved by the slice",
			objs: []runtime.Object{
				service("default", "multi", svcPorts(
					svcPort("http", 80, 0, v1.ProtocolTCP),
					svcPort("dns", 53, 0, v1.ProtocolUDP),
					svcPort("dns-tcp", 53, 0, v1.ProtocolTCP),
					svcPort("sctp", 9, 0, v1.ProtocolSCTP))),
				slice("default", "multi", "multi-1", v4, ports(
					port("http", 8080),
					protoPort("dns", 5353, v1.ProtocolUDP),
					protoPort("dns-tcp", 5354, v1.ProtocolTCP),
					protoPort("sctp", 9999, v1.ProtocolUDP), // wrong protocol: not a match
					port("metrics", 9090)),                  // no such service port
					ep("10.1.0.1")),
			},
			want: `
default/multi:dns mode=dsr
  fe 10.96.0.10:53/UDP internal ClusterIP
  be 10.1.0.1:5353 active w=1
default/multi:dns-tcp mode=dsr
  fe 10.96.0.10:53/TCP internal ClusterIP
  be 10.1.0.1:5354 active w=1
default/multi:http mode=dsr
  fe 10.96.0.10:80/TCP internal ClusterIP
  be 10.1.0.1:8080 active w=1
default/multi:sctp mode=dsr
  fe 10.96.0.10:9/SCTP internal ClusterIP
`,
		},
		{
			name: "endpoint conditions",
			objs: []runtime.Object{
				service("default", "web"),
				slice("default", "web", "web-1", v4, ports(port("http", 8080)),
					ep("10.1.0.1"),
					ep("10.1.0.2", conditions(ptr.To(false), ptr.To(true), ptr.To(true))),  // serving, terminating
					ep("10.1.0.3", conditions(ptr.To(false), ptr.To(false), ptr.To(true))), // not serving
					ep("10.1.0.4", conditions(nil, nil, nil)),                              // unknown = ready
					ep("10.1.0.5", conditions(ptr.To(false), ptr.To(true), ptr.To(false))), // not ready yet
					discovery.Endpoint{}), // no address
			},
			want: `
default/web:http mode=dsr
  fe 10.96.0.10:80/TCP internal ClusterIP
  be 10.1.0.1:8080 active w=1
  be 10.1.0.2:8080 terminating w=1
  be 10.1.0.4:8080 active w=1
`,
		},
		{
			name: "an address in two slices counts once, ready winning",
			objs: []runtime.Object{
				service("default", "web"),
				slice("default", "web", "web-1", v4, ports(port("http", 8080)),
					ep("10.1.0.1", conditions(ptr.To(false), ptr.To(true), ptr.To(true))),
					ep("10.1.0.2")),
				slice("default", "web", "web-2", v4, ports(port("http", 8080)),
					ep("10.1.0.1"), ep("10.1.0.2", conditions(ptr.To(false), ptr.To(true), ptr.To(true)))),
			},
			want: `
default/web:http mode=dsr
  fe 10.96.0.10:80/TCP internal ClusterIP
  be 10.1.0.1:8080 active w=1
  be 10.1.0.2:8080 active w=1
`,
		},
		{
			name: "traffic policies and session affinity",
			objs: []runtime.Object{
				service("default", "local", svcType(v1.ServiceTypeNodePort), svcPorts(svcPort("http", 80, 30080, v1.ProtocolTCP)),
					func(s *v1.Service) {
						s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
						s.Spec.InternalTrafficPolicy = ptr.To(v1.ServiceInternalTrafficPolicyLocal)
						s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
					}),
				service("default", "sticky", clusterIP("10.96.0.11"), func(s *v1.Service) {
					s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal // not externally reachable: ignored
					s.Spec.SessionAffinity = v1.ServiceAffinityClientIP
					s.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr.To[int32](600)}}
				}),
			},
			want: `
default/local:http mode=dsr affinity=3h0m0s external-local internal-local
  fe 10.96.0.10:80/TCP internal ClusterIP
  fe 127.0.0.1:30080/TCP internal NodePort
default/sticky:http mode=dsr affinity=10m0s
  fe 10.96.0.11:80/TCP internal ClusterIP
`,
		},
		{
			name: "zone hints: only this zone's ready endpoints take new flows",
			objs: []runtime.Object{
				service("default", "web"),
				slice("default", "web", "web-1", v4, ports(port("http", 8080)),
					ep("10.1.0.1", zoneHints("z1")),
					ep("10.1.0.2", zoneHints("z2")),
					ep("10.1.0.3", zoneHints("z2", "z1")),
					ep("10.1.0.4", conditions(ptr.To(false), ptr.To(true), ptr.To(true)))), // terminating, no hints: ignored by the rule
			},
			want: `
default/web:http mode=dsr
  fe 10.96.0.10:80/TCP internal ClusterIP
  be 10.1.0.1:8080 active w=1
  be 10.1.0.2:8080 active w=0
  be 10.1.0.3:8080 active w=1
  be 10.1.0.4:8080 terminating w=1
`,
		},
		{
			name: "zone hints ignored when one ready endpoint has none, or none is for this zone",
			objs: []runtime.Object{
				service("default", "partial"),
				slice("default", "partial", "partial-1", v4, ports(port("http", 8080)),
					ep("10.1.0.1", zoneHints("z1")), ep("10.1.0.2")),
				service("default", "elsewhere", clusterIP("10.96.0.11")),
				slice("default", "elsewhere", "elsewhere-1", v4, ports(port("http", 8080)),
					ep("10.1.1.1", zoneHints("z2")), ep("10.1.1.2", zoneHints("z3"))),
			},
			want: `
default/elsewhere:http mode=dsr
  fe 10.96.0.11:80/TCP internal ClusterIP
  be 10.1.1.1:8080 active w=1
  be 10.1.1.2:8080 active w=1
default/partial:http mode=dsr
  fe 10.96.0.10:80/TCP internal ClusterIP
  be 10.1.0.1:8080 active w=1
  be 10.1.0.2:8080 active w=1
`,
		},
		{
			name: "node hints come before zone hints",
			objs: []runtime.Object{
				service("default", "web"),
				slice("default", "web", "web-1", v4, ports(port("http", 8080)),
					ep("10.1.0.1", nodeHints("node-a"), zoneHints("z1")),
					ep("10.1.0.2", nodeHints("node-b"), zoneHints("z1"))),
			},
			want: `
default/web:http mode=dsr
  fe 10.96.0.10:80/TCP internal ClusterIP
  be 10.1.0.1:8080 active w=1
  be 10.1.0.2:8080 active w=0
`,
		},
		{
			name: "zone hints leave local endpoints of a Local policy alone",
			objs: []runtime.Object{
				service("default", "web", svcType(v1.ServiceTypeNodePort), svcPorts(svcPort("http", 80, 30080, v1.ProtocolTCP)),
					func(s *v1.Service) { s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal }),
				slice("default", "web", "web-1", v4, ports(port("http", 8080)),
					ep("10.1.0.1", onNode("node-a"), zoneHints("z2")),
					ep("10.1.0.2", onNode("node-b"), zoneHints("z1")),
					ep("10.1.0.3", onNode("node-b"), zoneHints("z2"))),
			},
			want: `
default/web:http mode=dsr external-local
  fe 10.96.0.10:80/TCP internal ClusterIP
  fe 127.0.0.1:30080/TCP internal NodePort
  be 10.1.0.1:8080 active w=1 node=node-a tunnel=192.168.0.1 local
  be 10.1.0.2:8080 active w=1 node=node-b tunnel=192.168.0.2
  be 10.1.0.3:8080 active w=0 node=node-b tunnel=192.168.0.2
`,
		},
		{
			name: "skipped: ExternalName, headless, labelled headless, another proxy's",
			objs: []runtime.Object{
				service("default", "ext", svcType(v1.ServiceTypeExternalName), clusterIP("")),
				service("default", "headless", clusterIP(v1.ClusterIPNone)),
				service("default", "labelled", labelled(v1.IsHeadlessService, "")),
				service("default", "other", labelled(labelServiceProxyName, "other")),
				service("default", "empty-label", labelled(labelServiceProxyName, "")),
				slice("default", "labelled", "labelled-1", v4, ports(port("http", 8080)), ep("10.1.0.1")),
			},
			want: "",
		},
		{
			name: "service-proxy-name selects labelled services only",
			opts: Options{ServiceProxyName: "weir"},
			objs: []runtime.Object{
				service("default", "ours", labelled(labelServiceProxyName, "weir")),
				service("default", "other", labelled(labelServiceProxyName, "other")),
				service("default", "unlabelled"),
			},
			want: `
default/ours:http mode=dsr
  fe 10.96.0.10:80/TCP internal ClusterIP
`,
		},
		{
			name: "annotations override mode and table size; invalid ones fall back",
			opts: Options{DefaultMode: lb.ModeSNAT, MaglevTableSize: 16381},
			objs: []runtime.Object{
				service("default", "good", annotated(AnnotationMode, "hybrid"), annotated(AnnotationMaglevTableSize, "4093")),
				service("default", "bad", clusterIP("10.96.0.11"), annotated(AnnotationMode, "fast"), annotated(AnnotationMaglevTableSize, "1000")),
			},
			want: `
default/bad:http mode=snat table=16381
  fe 10.96.0.11:80/TCP internal ClusterIP
default/good:http mode=hybrid table=4093
  fe 10.96.0.10:80/TCP internal ClusterIP
`,
			logs: []string{
				`msg="annotation weir.io/lb-mode: unknown mode \"fast\"`,
				`msg="annotation weir.io/maglev-table-size \"1000\": not an allowed table size`,
				`service=default/bad`,
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			opts := tc.opts
			opts.NodeName = "node-a"
			h := startSource(t, opts, append(testNodes(), tc.objs...)...)
			got := formatServices(h.replaced())
			if want := strings.TrimPrefix(tc.want, "\n"); got != want {
				t.Errorf("services:\n%s\nwant:\n%s", got, want)
			}
			for _, l := range tc.logs {
				if !strings.Contains(h.logs.String(), l) {
					t.Errorf("log lacks %q; log:\n%s", l, h.logs)
				}
			}
			for _, s := range h.replaced() {
				if err := lb.Validate(s); err != nil {
					t.Errorf("service %s does not validate: %v", s.Name, err)
				}
			}
		})
	}
}
