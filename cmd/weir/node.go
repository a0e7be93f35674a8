package main

import (
	"fmt"
	"net/netip"

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
