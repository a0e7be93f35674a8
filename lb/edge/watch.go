package edge

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// watchMask is what makes a directory's file new: a writer closing it, a
// rename into place, a create or delete (symlink swaps), attribute changes
// (a symlink's target being replaced). IN_MODIFY is left out on purpose:
// reacting to it would read files that are still being written.
const watchMask = unix.IN_CLOSE_WRITE | unix.IN_MOVED_TO | unix.IN_MOVED_FROM |
	unix.IN_CREATE | unix.IN_DELETE | unix.IN_ATTRIB | unix.IN_MOVE_SELF

// errWatchLost is inotify's report that a watched directory was removed
// or moved: the watch is set up again, since a symlink's target directory
// is replaced on every ConfigMap update.
var errWatchLost = errors.New("a watched directory was removed or moved")

// watch signals changed whenever the config file may have changed, until
// ctx is done: through inotify while it works, then by polling.
func (s *Source) watch(ctx context.Context, changed chan<- struct{}) {
	if !s.noInotify {
		for {
			err := s.inotify(ctx, changed)
			if ctx.Err() != nil {
				return
			}
			if errors.Is(err, errWatchLost) {
				continue
			}
			s.log.Warn("cannot watch the edge config with inotify; polling it instead", "error", err, "interval", s.pollInterval)
			break
		}
	}
	s.poll(ctx, changed)
}

func poke(changed chan<- struct{}) {
	select {
	case changed <- struct{}{}:
	default: // a signal is already pending; one is enough
	}
}

// watchDirs are the directories to watch: the file's own, and its
// target's when the file is a symlink (a ConfigMap mount, or a link into
// a config repository).
func (s *Source) watchDirs() []string {
	dirs := []string{filepath.Dir(s.path)}
	if target, err := filepath.EvalSymlinks(s.path); err == nil {
		if d := filepath.Dir(target); !slices.Contains(dirs, d) {
			dirs = append(dirs, d)
		}
	}
	return dirs
}

// inotify watches the directories until ctx is done (returning nil) or the
// watch breaks (returning why).
func (s *Source) inotify(ctx context.Context, changed chan<- struct{}) error {
	fd, err := unix.InotifyInit1(unix.IN_CLOEXEC | unix.IN_NONBLOCK)
	if err != nil {
		return fmt.Errorf("inotify_init1: %w", err)
	}
	// A non-blocking fd in an *os.File goes through the runtime poller, so
	// Close wakes a pending Read.
	f := os.NewFile(uintptr(fd), "inotify")
	defer f.Close()
	for _, dir := range s.watchDirs() {
		if _, err := unix.InotifyAddWatch(fd, dir, watchMask); err != nil {
			return fmt.Errorf("inotify watch on directory %s: %w", dir, err)
		}
	}
	stop := context.AfterFunc(ctx, func() { f.Close() })
	defer stop()
	// The file may have changed before the watch was in place (after the
	// first load, or while a lost watch was set up again); the reload
	// skips identical content.
	poke(changed)

	buf := make([]byte, 64*(unix.SizeofInotifyEvent+unix.NAME_MAX+1))
	for {
		n, err := f.Read(buf)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, syscall.EINTR) {
				continue
			}
			return fmt.Errorf("read inotify events: %w", err)
		}
		lost := false
		for off := 0; off+unix.SizeofInotifyEvent <= n; {
			// struct inotify_event: wd, mask, cookie, len, then len bytes of name.
			mask := binary.NativeEndian.Uint32(buf[off+4:])
			off += unix.SizeofInotifyEvent + int(binary.NativeEndian.Uint32(buf[off+12:]))
			if mask&(unix.IN_IGNORED|unix.IN_MOVE_SELF) != 0 {
				lost = true
			}
			if mask&unix.IN_Q_OVERFLOW != 0 {
				s.log.Warn("inotify queue overflowed; reloading to be sure")
			}
		}
		poke(changed)
		if lost {
			return errWatchLost
		}
	}
}

// fileStamp is what polling compares: a rename-replace changes the inode,
// an in-place write the size or mtime.
type fileStamp struct {
	ino, dev uint64
	size     int64
	mtime    time.Time
	missing  bool
}

func stampOf(path string) fileStamp {
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{missing: true}
	}
	st := fileStamp{size: fi.Size(), mtime: fi.ModTime()}
	if sys, ok := fi.Sys().(*syscall.Stat_t); ok {
		st.ino, st.dev = sys.Ino, sys.Dev
	}
	return st
}

// poll stats the file every pollInterval and signals when it looks
// different.
func (s *Source) poll(ctx context.Context, changed chan<- struct{}) {
	last := stampOf(s.path)
	// The file may have changed between the last load and now (or while a
	// broken inotify watch was blind); the reload skips identical content.
	poke(changed)
	t := time.NewTicker(s.pollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if st := stampOf(s.path); st != last {
				last = st
				poke(changed)
			}
		}
	}
}
