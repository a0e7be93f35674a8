package sockmap

import (
	"strings"
	"testing"
)

func TestCgroup2Mount(t *testing.T) {
	for _, tc := range []struct {
		name, mountinfo, want string
	}{
		{
			name: "hybrid",
			mountinfo: `24 1 0:22 / /sys rw,nosuid shared:7 - sysfs sysfs rw
30 24 0:26 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw,nsdelegate
32 30 0:28 / /sys/fs/cgroup/systemd rw shared:11 - cgroup cgroup rw,name=systemd
`,
			want: "/sys/fs/cgroup/unified",
		},
		{
			name:      "unified, no optional fields",
			mountinfo: "35 24 0:30 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n",
			want:      "/sys/fs/cgroup",
		},
		{
			name:      "escaped blank",
			mountinfo: "35 24 0:30 / /run/my\\040cgroups rw shared:1 master:2 - cgroup2 none rw\n",
			want:      "/run/my cgroups",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := cgroup2Mount(strings.NewReader(tc.mountinfo))
			if err != nil || got != tc.want {
				t.Errorf("cgroup2Mount = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
	_, err := cgroup2Mount(strings.NewReader("30 24 0:26 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"))
	if err == nil || !strings.Contains(err.Error(), "--cgroup-root") {
		t.Errorf("no cgroup2 mount: %v, want an error naming --cgroup-root", err)
	}
}

func TestResolveCgroupRoot(t *testing.T) {
	root, err := ResolveCgroupRoot("auto")
	if err != nil {
		t.Skipf("no cgroup v2 here: %v", err)
	}
	if got, err := ResolveCgroupRoot(root); err != nil || got != root {
		t.Errorf("ResolveCgroupRoot(%s) = %q, %v", root, got, err)
	}
	dir := t.TempDir()
	if _, err := ResolveCgroupRoot(dir); err == nil || !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), "cgroup v2") {
		t.Errorf("ResolveCgroupRoot(%s) = %v, want an error naming it and cgroup v2", dir, err)
	}
}
