package main

import (
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
)

// defaultRouteDevices returns the interfaces that carry a default route:
// what --devices auto means on a real node.
func defaultRouteDevices() ([]string, error) {
	var names []string
	seen := map[int]bool{}
	for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
		routes, err := netlink.RouteListFiltered(fam, &netlink.Route{Dst: nil}, netlink.RT_FILTER_DST)
		if err != nil {
			return nil, fmt.Errorf("--devices auto: list routes: %w", err)
		}
		for _, r := range routes {
			if r.Dst != nil && !r.Dst.IP.IsUnspecified() {
				continue
			}
			if r.LinkIndex == 0 || seen[r.LinkIndex] {
				continue
			}
			l, err := netlink.LinkByIndex(r.LinkIndex)
			if err != nil {
				continue
			}
			seen[r.LinkIndex] = true
			names = append(names, l.Attrs().Name)
		}
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("--devices auto: no interface has a default route; name the devices explicitly")
	}
	return names, nil
}

// nodeAddrs returns every address of every interface of this network
// namespace: DSR traffic tunnelled to any of them is decapsulated.
func nodeAddrs() ([]netip.Addr, error) {
	list, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
	if err != nil {
		return nil, fmt.Errorf("list node addresses: %w", err)
	}
	var out []netip.Addr
	for _, a := range list {
		if ip, ok := netip.AddrFromSlice(a.IP); ok && !ip.Unmap().IsLoopback() {
			out = append(out, ip.Unmap())
		}
	}
	return out, nil
}

// snatAddrs picks the SNAT source addresses: the flags, or the first
// global address of each family on the first device that has one.
func snatAddrs(devices []string, flag4, flag6 string) (v4, v6 netip.Addr, err error) {
	if v4, err = parseOptionalAddr("snat-ipv4", flag4, true); err != nil {
		return
	}
	if v6, err = parseOptionalAddr("snat-ipv6", flag6, false); err != nil {
		return
	}
	for _, d := range devices {
		l, lerr := netlink.LinkByName(d)
		if lerr != nil {
			return v4, v6, fmt.Errorf("--devices: interface %q: %w (check `ip link` in the agent's network namespace)", d, lerr)
		}
		addrs, lerr := netlink.AddrList(l, netlink.FAMILY_ALL)
		if lerr != nil {
			return v4, v6, fmt.Errorf("list addresses of %s: %w", d, lerr)
		}
		for _, a := range addrs {
			ip, ok := netip.AddrFromSlice(a.IP)
			if !ok {
				continue
			}
			ip = ip.Unmap()
			switch {
			case ip.Is4() && !v4.IsValid():
				v4 = ip
			case ip.Is6() && ip.IsGlobalUnicast() && !v6.IsValid():
				v6 = ip
			}
		}
	}
	return v4, v6, nil
}

// portRange is the SNAT source port range; overlap, when not empty, is
// the node's ephemeral range that an explicit range overlaps.
type portRange struct {
	min, max uint16
	overlap  string
}

func (r portRange) String() string { return fmt.Sprintf("%d-%d", r.min, r.max) }

// snatPortRange turns --snat-port-range into a range. A SNAT flow's
// packets leave from the SNAT address, usually the node's own, so a SNAT
// port the kernel also hands out to the node's connections (kubelet's
// probes of a pod, say) would put two connections on one 4-tuple at the
// backend, and the backend's replies to the node's connection would be
// taken for the SNAT flow's. kube-proxy's masquerading is done by the
// kernel, which knows its own connections; XDP doesn't, so "auto" keeps
// the ranges apart: the larger stretch of 1024-65535 outside the
// ephemeral range.
func snatPortRange(spec string, ephemeral func() (uint16, uint16, error)) (portRange, error) {
	if spec == "auto" {
		lo, hi, err := ephemeral()
		if err != nil {
			return portRange{}, fmt.Errorf("--snat-port-range auto: %w (set the range explicitly, e.g. --snat-port-range 1024-32767)", err)
		}
		below := portRange{min: 1024, max: lo - 1}
		above := portRange{min: hi + 1, max: 65535}
		size := func(r portRange) int {
			if r.max < r.min || r.min == 0 {
				return 0
			}
			return int(r.max) - int(r.min) + 1
		}
		best := below
		if size(above) > size(below) {
			best = above
		}
		if size(best) < 1024 {
			return portRange{}, fmt.Errorf("--snat-port-range auto: the node's ephemeral ports %d-%d leave fewer than 1024 ports for SNAT (narrow net.ipv4.ip_local_port_range, or set --snat-port-range)", lo, hi)
		}
		return best, nil
	}
	a, b, ok := strings.Cut(spec, "-")
	lo, err1 := strconv.ParseUint(a, 10, 16)
	hi, err2 := strconv.ParseUint(b, 10, 16)
	if !ok || err1 != nil || err2 != nil || lo == 0 || lo > hi {
		return portRange{}, fmt.Errorf("--snat-port-range %q: want MIN-MAX with 1 <= MIN <= MAX <= 65535, or auto", spec)
	}
	r := portRange{min: uint16(lo), max: uint16(hi)}
	if elo, ehi, err := ephemeral(); err == nil && r.min <= ehi && elo <= r.max {
		r.overlap = fmt.Sprintf("%d-%d", elo, ehi)
	}
	return r, nil
}

// readEphemeralPorts reads the node's ephemeral port range (of the
// agent's network namespace).
func readEphemeralPorts() (uint16, uint16, error) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0, 0, err
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0, 0, fmt.Errorf("net.ipv4.ip_local_port_range: unexpected %q", b)
	}
	lo, err1 := strconv.ParseUint(f[0], 10, 16)
	hi, err2 := strconv.ParseUint(f[1], 10, 16)
	if err1 != nil || err2 != nil || lo == 0 || lo > hi {
		return 0, 0, fmt.Errorf("net.ipv4.ip_local_port_range: unexpected %q", b)
	}
	return uint16(lo), uint16(hi), nil
}
