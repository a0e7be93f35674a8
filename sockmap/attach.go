package sockmap

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// linkDir is where links are pinned, below the maps' root.
func (p *Program) linkDir() string { return filepath.Join(p.root, "links") }

// linkPin is the pin of one hook's link on one cgroup. The cgroup is named
// by a hash of its path: paths hold slashes, and bpffs names are short.
func (p *Program) linkPin(h hook, cgroupPath string) string {
	sum := sha256.Sum256([]byte(cgroupPath))
	return filepath.Join(p.linkDir(), "sock_"+h.name+"_"+hex.EncodeToString(sum[:8]))
}

// Attach attaches every hook to the cgroup (and so to its subtree). Links
// already pinned for this cgroup by an earlier agent are switched to this
// Program's programs atomically; pins left from a removed cgroup of the
// same path are replaced. On error the links created by this call are
// removed again (updated ones keep the new program, which is harmless).
func (p *Program) Attach(cgroupPath string) error {
	dir, err := checkCgroup2Dir(cgroupPath)
	if err != nil {
		return fmt.Errorf("sockmap: attach: %w", err)
	}
	id, err := cgroupID(dir)
	if err != nil {
		return fmt.Errorf("sockmap: attach: %w", err)
	}
	if err := os.MkdirAll(p.linkDir(), 0o755); err != nil {
		return fmt.Errorf("sockmap: create link pin directory %s: %w", p.linkDir(), err)
	}

	p.mu.Lock()
	defer p.mu.Unlock()
	// ls are this call's links so far; created marks those it made (a
	// failure removes them) rather than reopened (their pins stay).
	ls := make([]link.Link, 0, len(hooks))
	created := make([]bool, 0, len(hooks))
	fail := func(err error) error {
		for i, l := range ls {
			if created[i] {
				_ = l.Unpin()
			}
			_ = l.Close()
		}
		return err
	}
	for _, h := range hooks {
		prog := h.prog(&p.progs)
		pin := p.linkPin(h, dir)
		l, err := reusePinned(pin, id, h, prog)
		if err != nil {
			return fail(fmt.Errorf("sockmap: attach %s to cgroup %s: %w", h.name, dir, err))
		}
		if l != nil {
			ls, created = append(ls, l), append(created, false)
			continue
		}
		l, err = link.AttachCgroup(link.CgroupOptions{Path: dir, Attach: h.attach, Program: prog})
		if err != nil {
			return fail(fmt.Errorf("sockmap: attach %s to cgroup %s: %w", h.name, dir, err))
		}
		ls, created = append(ls, l), append(created, true)
		if err := l.Pin(pin); err != nil {
			return fail(fmt.Errorf("sockmap: pin the %s link of cgroup %s at %s: %w", h.name, dir, pin, err))
		}
	}
	for _, old := range p.links[dir] {
		_ = old.Close()
	}
	p.links[dir] = ls
	return nil
}

// reusePinned opens the pinned link of a hook and points it at prog. It
// returns nil (and removes the pin) when there is none, or when the pin is
// of another cgroup or attach point: a cgroup removed and made again under
// the same path has a new ID, and its old link is dead.
func reusePinned(pin string, cgroupID uint64, h hook, prog *ebpf.Program) (link.Link, error) {
	l, err := link.LoadPinnedLink(pin, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("open pinned link %s: %w (remove the pin to attach afresh)", pin, err)
	}
	info, err := l.Info()
	if err == nil {
		if ci := info.Cgroup(); ci != nil && ci.CgroupId == cgroupID && uint32(ci.AttachType) == uint32(h.attach) {
			if err := l.Update(prog); err != nil {
				_ = l.Close()
				return nil, fmt.Errorf("update pinned link %s: %w", pin, err)
			}
			return l, nil
		}
	}
	// Stale: unpin, and closing the last reference detaches it.
	if err := l.Unpin(); err != nil {
		_ = l.Close()
		return nil, fmt.Errorf("remove stale link pin %s: %w", pin, err)
	}
	_ = l.Close()
	return nil, nil
}

// Detach removes every hook from the cgroup, whether this Program or an
// earlier agent attached it. Hooks that are not attached are no error; the
// cgroup itself need not exist any more.
func (p *Program) Detach(cgroupPath string) error {
	dir, err := filepath.Abs(cgroupPath)
	if err != nil {
		return fmt.Errorf("sockmap: detach cgroup %q: %w", cgroupPath, err)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	var errs []error
	for _, l := range p.links[dir] {
		errs = append(errs, ignoreNotExist(l.Unpin()), l.Close())
	}
	delete(p.links, dir)
	// Links pinned by an earlier agent (or already closed above).
	for _, h := range hooks {
		pin := p.linkPin(h, dir)
		l, err := link.LoadPinnedLink(pin, nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("sockmap: open pinned link %s: %w", pin, err))
			continue
		}
		errs = append(errs, l.Unpin(), l.Close())
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("sockmap: detach cgroup %s: %w", dir, err)
	}
	return nil
}

func ignoreNotExist(err error) error {
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}
