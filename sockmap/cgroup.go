package sockmap

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ResolveCgroupRoot turns the --cgroup-root flag into a cgroup v2
// directory. "auto" is the first cgroup2 mount in /proc/self/mountinfo
// (on a hybrid v1/v2 host that is /sys/fs/cgroup/unified); anything else
// must already be a directory on a cgroup2 file system.
func ResolveCgroupRoot(s string) (string, error) {
	if s == "auto" {
		f, err := os.Open("/proc/self/mountinfo")
		if err != nil {
			return "", fmt.Errorf("find the cgroup v2 mount: %w", err)
		}
		defer f.Close()
		mnt, err := cgroup2Mount(f)
		if err != nil {
			return "", err
		}
		return mnt, nil
	}
	return checkCgroup2Dir(s)
}

// cgroup2Mount returns the mount point of the first cgroup2 file system in
// a mountinfo listing (proc(5)).
func cgroup2Mount(r io.Reader) (string, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		// ID parent maj:min root mountpoint options [optional...] - fstype source superopts
		fields := strings.Fields(sc.Text())
		sep := -1
		for i, f := range fields {
			if f == "-" {
				sep = i
				break
			}
		}
		if sep < 5 || sep+1 >= len(fields) {
			continue
		}
		if fields[sep+1] == "cgroup2" {
			return unescapeMountinfo(fields[4]), nil
		}
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("read mountinfo: %w", err)
	}
	return "", errors.New("no cgroup2 file system is mounted (mount one with `mount -t cgroup2 none /sys/fs/cgroup/unified`, or pass --cgroup-root DIR)")
}

// unescapeMountinfo undoes the octal escapes (\040 for a space) that
// mountinfo uses for blanks and backslashes in paths.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// checkCgroup2Dir returns the cleaned absolute path of a directory on a
// cgroup2 file system, or an error naming the path and the fix.
func checkCgroup2Dir(path string) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", fmt.Errorf("cgroup %q: %w", path, err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(abs, &st); err != nil {
		return "", fmt.Errorf("cgroup %s: %w (pass a directory of the cgroup v2 hierarchy, or \"auto\")", abs, err)
	}
	if st.Type != unix.CGROUP2_SUPER_MAGIC {
		return "", fmt.Errorf("cgroup %s is not on a cgroup v2 file system (pass the cgroup2 mount point or a directory under it, e.g. \"auto\"; on a hybrid host that is /sys/fs/cgroup/unified)", abs)
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return "", fmt.Errorf("cgroup %s: %w", abs, err)
	}
	if !fi.IsDir() {
		return "", fmt.Errorf("cgroup %s is a file, not a cgroup directory (pass its parent directory)", abs)
	}
	return abs, nil
}

// cgroupID returns the kernel's ID of a cgroup v2 directory: the value
// bpf_get_current_cgroup_id() and its ancestor variant return, and what a
// cgroup bpf_link reports. The kernel hands it out as the directory's
// file handle.
func cgroupID(dir string) (uint64, error) {
	h, _, err := unix.NameToHandleAt(unix.AT_FDCWD, dir, 0)
	if err != nil {
		return 0, fmt.Errorf("cgroup %s: read its ID: %w", dir, err)
	}
	b := h.Bytes()
	if len(b) < 8 {
		return 0, fmt.Errorf("cgroup %s: file handle of %d bytes, want 8", dir, len(b))
	}
	return binary.NativeEndian.Uint64(b[:8]), nil
}
