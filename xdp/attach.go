package xdp

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf/link"
)

// AttachMode is how the program is attached to a device.
type AttachMode int

const (
	// Auto tries native (driver) mode and falls back to generic mode,
	// logging the fallback.
	Auto AttachMode = iota
	// Native runs the program in the driver, before any skb exists.
	Native
	// Generic runs it on skbs, on any device (slower).
	Generic
)

func (m AttachMode) String() string {
	switch m {
	case Auto:
		return "auto"
	case Native:
		return "native"
	case Generic:
		return "generic"
	}
	return fmt.Sprintf("mode(%d)", int(m))
}

// ParseAttachMode accepts native, generic or auto.
func ParseAttachMode(s string) (AttachMode, error) {
	for _, m := range []AttachMode{Auto, Native, Generic} {
		if s == m.String() {
			return m, nil
		}
	}
	return 0, fmt.Errorf("unknown XDP attach mode %q (want native, generic or auto)", s)
}

// LinkPin is where the link of a device is pinned under the maps' root.
func LinkPin(root, ifname string) string {
	return filepath.Join(root, "links", "xdp_"+ifname)
}

// Attach runs the program on the device ifname of the calling thread's
// network namespace. When a link pinned by an earlier agent exists for
// the device, the new program replaces the old one in it atomically (the
// link keeps its attach mode); otherwise a new link is made and pinned.
func (p *Program) Attach(ifname string, mode AttachMode) error {
	iface, err := net.InterfaceByName(ifname)
	if err != nil {
		return fmt.Errorf("xdp: attach to %s: no such interface in this network namespace (check the device list; Attach must run in the device's namespace): %w", ifname, err)
	}
	pin := LinkPin(p.maps.Root(), ifname)
	if err := os.MkdirAll(filepath.Dir(pin), 0o755); err != nil {
		return fmt.Errorf("xdp: create link pin directory: %w", err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()

	if l, err := link.LoadPinnedLink(pin, nil); err == nil {
		if linkIfindex(l) == iface.Index {
			if err := l.Update(p.objs.Entry); err != nil {
				l.Close()
				return fmt.Errorf("xdp: replace the program in the pinned link %s: %w", pin, err)
			}
			p.replaceLink(ifname, l)
			return nil
		}
		// The device was recreated since: the old link is defunct.
		_ = l.Unpin()
		l.Close()
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("xdp: open pinned link %s: %w (remove it to attach afresh)", pin, err)
	}

	l, err := p.attach(iface, mode)
	if err != nil {
		return err
	}
	if err := l.Pin(pin); err != nil {
		l.Close()
		return fmt.Errorf("xdp: pin the link of %s at %s: %w", ifname, pin, err)
	}
	p.replaceLink(ifname, l)
	return nil
}

func (p *Program) attach(iface *net.Interface, mode AttachMode) (link.Link, error) {
	opts := link.XDPOptions{Program: p.objs.Entry, Interface: iface.Index}
	switch mode {
	case Native, Auto:
		opts.Flags = link.XDPDriverMode
	case Generic:
		opts.Flags = link.XDPGenericMode
	default:
		return nil, fmt.Errorf("xdp: unknown attach mode %d", int(mode))
	}
	l, err := link.AttachXDP(opts)
	if err != nil && mode == Auto {
		p.log.Info("native XDP not available, using generic mode", "device", iface.Name, "error", err)
		opts.Flags = link.XDPGenericMode
		l, err = link.AttachXDP(opts)
	}
	if err != nil {
		return nil, fmt.Errorf("xdp: attach to %s in %s mode: %w (another XDP program on the device? `ip link set dev %s xdp off` removes one not owned by Weir)", iface.Name, mode, err, iface.Name)
	}
	return l, nil
}

func (p *Program) replaceLink(ifname string, l link.Link) {
	if old := p.links[ifname]; old != nil {
		old.Close()
	}
	p.links[ifname] = l
}

// linkIfindex is the device a pinned XDP link is attached to, 0 if none.
func linkIfindex(l link.Link) int {
	info, err := l.Info()
	if err != nil {
		return 0
	}
	if x := info.XDP(); x != nil {
		return int(x.Ifindex)
	}
	return 0
}

// Detach removes the program from ifname: the pinned link is removed and
// closed. Detaching a device that has no Weir link succeeds.
func (p *Program) Detach(ifname string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	pin := LinkPin(p.maps.Root(), ifname)
	l := p.links[ifname]
	delete(p.links, ifname)
	if l == nil {
		var err error
		l, err = link.LoadPinnedLink(pin, nil)
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("xdp: open pinned link %s: %w", pin, err)
		}
	}
	var errs []error
	if err := l.Unpin(); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("xdp: unpin %s: %w", pin, err))
	}
	// A pinned link lives on in the kernel until its last fd closes:
	// Close after Unpin detaches it.
	errs = append(errs, l.Close())
	return errors.Join(errs...)
}
