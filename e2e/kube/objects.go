package kube

import (
	"context"
	"fmt"
	"net/netip"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// CreateNode creates a Node and sets its InternalIPs through the status
// subresource (a create drops status). kube-proxy reads its node IPs from
// this object, so create it before RunKubeProxy: the first InternalIP's
// family is its primary one, and a second one of the other family gives
// the secondary family's node IP (a dual-stack node; without it
// kube-proxy's NodePorts of that family open on every local address).
func (c *Cluster) CreateNode(ctx context.Context, name string, internalIPs ...netip.Addr) (*corev1.Node, error) {
	if len(internalIPs) == 0 {
		return nil, fmt.Errorf("create node %s: no InternalIP given", name)
	}
	n, err := c.Client.CoreV1().Nodes().Create(ctx, &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"kubernetes.io/hostname": name}},
	}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("create node %s: %w", name, err)
	}
	n.Status.Addresses = nil
	for _, ip := range internalIPs {
		n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: ip.String()})
	}
	n.Status.Addresses = append(n.Status.Addresses, corev1.NodeAddress{Type: corev1.NodeHostName, Address: name})
	n.Status.Conditions = []corev1.NodeCondition{{
		Type: corev1.NodeReady, Status: corev1.ConditionTrue,
		Reason: "WeirTest", LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now(),
	}}
	n, err = c.Client.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{})
	if err != nil {
		return nil, fmt.Errorf("set status of node %s: %w", name, err)
	}
	return n, nil
}

// CreateNamespace creates a namespace.
func (c *Cluster) CreateNamespace(ctx context.Context, name string) error {
	_, err := c.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create namespace %s: %w", name, err)
	}
	return nil
}

// SetLoadBalancerIngress writes status.loadBalancer.ingress, the part a
// cloud controller would fill in; no controller runs in a test cluster.
func (c *Cluster) SetLoadBalancerIngress(ctx context.Context, svc *corev1.Service, ips ...netip.Addr) (*corev1.Service, error) {
	s := svc.DeepCopy()
	s.Status.LoadBalancer.Ingress = nil
	for _, ip := range ips {
		s.Status.LoadBalancer.Ingress = append(s.Status.LoadBalancer.Ingress, corev1.LoadBalancerIngress{IP: ip.String()})
	}
	out, err := c.Client.CoreV1().Services(s.Namespace).UpdateStatus(ctx, s, metav1.UpdateOptions{})
	if err != nil {
		return nil, fmt.Errorf("set load balancer ingress of service %s/%s: %w", s.Namespace, s.Name, err)
	}
	return out, nil
}

// Port is a service port named after its protocol and number ("tcp-80")
// whose target is targetPort.
func Port(proto corev1.Protocol, port, targetPort int32) corev1.ServicePort {
	return corev1.ServicePort{
		Name:       portName(proto, port),
		Protocol:   proto,
		Port:       port,
		TargetPort: intstr.FromInt32(targetPort),
	}
}

func portName(proto corev1.Protocol, port int32) string {
	switch proto {
	case corev1.ProtocolUDP:
		return "udp-" + strconv.Itoa(int(port))
	case corev1.ProtocolSCTP:
		return "sctp-" + strconv.Itoa(int(port))
	default:
		return "tcp-" + strconv.Itoa(int(port))
	}
}

// Service builds a selector-less ClusterIP Service (its endpoints come from
// EndpointSlices the test writes; no controller manager runs). Change Type,
// ExternalIPs and the rest on the result before creating it.
func Service(namespace, name string, ports ...corev1.ServicePort) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
		Spec: corev1.ServiceSpec{
			Type:  corev1.ServiceTypeClusterIP,
			Ports: ports,
		},
	}
}

// EndpointSlice builds a slice for svc with one ready endpoint per address
// and, for each service port, an endpoint port of the same name and
// protocol on its target port. The address type follows the first address
// (IPv4 without addresses).
func EndpointSlice(svc *corev1.Service, sliceName string, addrs ...netip.Addr) *discoveryv1.EndpointSlice {
	at := discoveryv1.AddressTypeIPv4
	if len(addrs) > 0 && addrs[0].Is6() {
		at = discoveryv1.AddressTypeIPv6
	}
	s := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: svc.Namespace,
			Name:      sliceName,
			Labels: map[string]string{
				discoveryv1.LabelServiceName: svc.Name,
				discoveryv1.LabelManagedBy:   "weir-e2e",
			},
		},
		AddressType: at,
	}
	for _, p := range svc.Spec.Ports {
		target := p.TargetPort.IntVal
		if target == 0 {
			target = p.Port
		}
		s.Ports = append(s.Ports, discoveryv1.EndpointPort{
			Name: new(p.Name), Protocol: new(p.Protocol), Port: new(target),
		})
	}
	for _, a := range addrs {
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{a.String()},
			Conditions: discoveryv1.EndpointConditions{Ready: new(true), Serving: new(true), Terminating: new(false)},
		})
	}
	return s
}
