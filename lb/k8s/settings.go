package k8s

import (
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/weir-lb/weir/lb"
	"github.com/weir-lb/weir/maglev"
)

// Annotations this source reads.
const (
	// AnnotationMode overrides Options.DefaultMode: dsr, snat or hybrid.
	AnnotationMode = "weir.io/lb-mode"
	// AnnotationMaglevTableSize overrides Options.MaglevTableSize; the
	// value must be one of maglev.AllowedTableSizes.
	AnnotationMaglevTableSize = "weir.io/maglev-table-size"
)

// annotationLegacySourceRanges is the cloud providers' older spelling of
// spec.loadBalancerSourceRanges. kube-proxy ignores it (cloud load
// balancers enforce it themselves, often from their own addresses), and
// so does Weir: honouring it dropped traffic kube-proxy lets through.
const annotationLegacySourceRanges = "service.beta.kubernetes.io/load-balancer-source-ranges"

// settings are the per-service values shared by its ports and families.
type settings struct {
	mode          lb.Mode
	tableSize     uint32
	affinity      time.Duration
	externalLocal bool
	internalLocal bool
	accessible    bool // externally reachable: NodePort, LoadBalancer, external IPs
}

// usesLocal and usesCluster say which endpoint sets the service's
// traffic policies read, as kube-proxy's UsesLocalEndpoints and
// UsesClusterEndpoints: topology hints only narrow the cluster set.
func (s settings) usesLocal() bool   { return s.internalLocal || s.externalLocal }
func (s settings) usesCluster() bool { return !s.internalLocal || s.accessible }

func settingsOf(svc *v1.Service, e *env, r *result) settings {
	s := settings{mode: e.defaultMode, tableSize: e.tableSize}
	if v, ok := svc.Annotations[AnnotationMode]; ok {
		m, err := lb.ParseMode(strings.TrimSpace(v))
		if err != nil {
			r.warnf("annotation %s: %v; using the default %s", AnnotationMode, err, e.defaultMode)
		} else {
			s.mode = m
		}
	}
	if v, ok := svc.Annotations[AnnotationMaglevTableSize]; ok {
		n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 32)
		if err == nil {
			err = maglev.ValidTableSize(uint32(n))
		}
		if err != nil {
			r.warnf("annotation %s %q: not an allowed table size (use one of %v); using the default", AnnotationMaglevTableSize, v, maglev.AllowedTableSizes)
		} else {
			s.tableSize = uint32(n)
		}
	}
	if svc.Spec.SessionAffinity == v1.ServiceAffinityClientIP {
		s.affinity = defaultAffinityTimeout
		if c := svc.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil {
			t := time.Duration(*c.ClientIP.TimeoutSeconds) * time.Second
			if t <= 0 || t > lb.MaxSessionAffinity {
				r.warnf("sessionAffinityConfig.clientIP.timeoutSeconds %d is out of range (1-%d); using %d",
					*c.ClientIP.TimeoutSeconds, int(lb.MaxSessionAffinity.Seconds()), int(defaultAffinityTimeout.Seconds()))
			} else {
				s.affinity = t
			}
		}
	}
	s.accessible = externallyAccessible(svc)
	s.externalLocal = s.accessible && svc.Spec.ExternalTrafficPolicy == v1.ServiceExternalTrafficPolicyLocal
	s.internalLocal = svc.Spec.InternalTrafficPolicy != nil && *svc.Spec.InternalTrafficPolicy == v1.ServiceInternalTrafficPolicyLocal
	return s
}

// externallyAccessible is Kubernetes' rule for when externalTrafficPolicy
// applies at all.
func externallyAccessible(svc *v1.Service) bool {
	switch svc.Spec.Type {
	case v1.ServiceTypeLoadBalancer, v1.ServiceTypeNodePort:
		return true
	case v1.ServiceTypeClusterIP, "":
		return len(svc.Spec.ExternalIPs) > 0
	}
	return false
}

// sourceRanges parses spec.loadBalancerSourceRanges into one sorted list
// per family. A /0 in a family allows everyone, so that family gets no
// list, as in kube-proxy.
func sourceRanges(svc *v1.Service, r *result) (v4, v6 []netip.Prefix) {
	raw, from := svc.Spec.LoadBalancerSourceRanges, "spec.loadBalancerSourceRanges"
	var all4, all6 bool
	for _, s := range raw {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil || p.Addr().Is4In6() {
			r.warnf("%s: %q is not a CIDR (use e.g. 203.0.113.0/24): ignored", from, s)
			continue
		}
		p = p.Masked()
		if p.Addr().Is4() {
			all4 = all4 || p.Bits() == 0
			v4 = append(v4, p)
		} else {
			all6 = all6 || p.Bits() == 0
			v6 = append(v6, p)
		}
	}
	if all4 {
		v4 = nil
	}
	if all6 {
		v6 = nil
	}
	return sortPrefixes(v4), sortPrefixes(v6)
}

func sortPrefixes(ps []netip.Prefix) []netip.Prefix {
	slices.SortFunc(ps, func(a, b netip.Prefix) int {
		if c := a.Addr().Compare(b.Addr()); c != 0 {
			return c
		}
		return a.Bits() - b.Bits()
	})
	return slices.Compact(ps)
}

func sortAddrs(as []netip.Addr) []netip.Addr {
	slices.SortFunc(as, netip.Addr.Compare)
	return slices.Compact(as)
}
