package e2e

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"

	"github.com/weir-lb/weir/lb"
	"github.com/weir-lb/weir/lb/edge"
)

// agentFlags are the flags `weir agent --help` lists.
func agentFlags(t *testing.T) map[string]bool {
	t.Helper()
	out, _ := exec.Command(weirBinary(t), "agent", "--help").CombinedOutput()
	flags := map[string]bool{}
	for _, m := range regexp.MustCompile(`--([a-z0-9-]+)`).FindAllStringSubmatch(string(out), -1) {
		flags[m[1]] = true
	}
	if !flags["devices"] {
		t.Fatalf("weir agent --help lists no --devices:\n%s", out)
	}
	return flags
}

// checkArgs fails for any --flag in args the agent doesn't have.
func checkArgs(t *testing.T, where string, args []string, flags map[string]bool) {
	t.Helper()
	for _, a := range args {
		if !strings.HasPrefix(a, "--") {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimPrefix(a, "--"), "=")
		if !flags[name] {
			t.Errorf("%s passes --%s, which `weir agent` does not have", where, name)
		}
	}
}

// The Kubernetes manifests decode into typed objects, and the DaemonSet
// runs the agent with flags it has.
func TestDeployKubernetes(t *testing.T) {
	data, err := os.ReadFile("../deploy/kubernetes/weir.yaml")
	must(t, err)
	dec := yaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	decoder := scheme.Codecs.UniversalDeserializer()
	var ds *appsv1.DaemonSet
	kinds := map[string]bool{}
	for {
		doc, err := dec.Read()
		if err != nil {
			break
		}
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		obj, gvk, err := decoder.Decode(doc, nil, nil)
		if err != nil {
			t.Fatalf("deploy/kubernetes/weir.yaml: %v\n%s", err, doc)
		}
		kinds[gvk.Kind] = true
		if d, ok := obj.(*appsv1.DaemonSet); ok {
			ds = d
		}
		var _ runtime.Object = obj
	}
	for _, k := range []string{"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "DaemonSet"} {
		if !kinds[k] {
			t.Errorf("no %s in the manifests", k)
		}
	}
	if ds == nil {
		t.Fatal("no DaemonSet")
	}
	c := ds.Spec.Template.Spec.Containers[0]
	if len(c.Args) == 0 || c.Args[0] != "agent" {
		t.Fatalf("the DaemonSet doesn't run `weir agent`: %v", c.Args)
	}
	checkArgs(t, "the DaemonSet", c.Args[1:], agentFlags(t))
	joined := strings.Join(c.Args, " ")
	for _, want := range []string{"--devices=auto", "--cgroup-root=auto"} {
		if !strings.Contains(joined, want) {
			t.Errorf("a node agent needs %s; args are %v", want, c.Args)
		}
	}
}

// The systemd units run the agent with flags it has, and the example edge
// config is valid.
func TestDeployEdge(t *testing.T) {
	flags := agentFlags(t)
	for _, unit := range []string{"weir.service", "weir-backend.service"} {
		data, err := os.ReadFile("../deploy/systemd/" + unit)
		must(t, err)
		found := false
		for _, line := range strings.Split(string(data), "\n") {
			if cmd, ok := strings.CutPrefix(line, "ExecStart="); ok {
				found = true
				f := strings.Fields(cmd)
				if len(f) < 2 || f[1] != "agent" {
					t.Errorf("%s: ExecStart does not run `weir agent`: %s", unit, cmd)
					continue
				}
				checkArgs(t, unit, f[2:], flags)
			}
		}
		if !found {
			t.Errorf("%s has no ExecStart", unit)
		}
	}
	svcs, err := edge.Load("../deploy/edge/edge.yaml", edge.Defaults{Mode: lb.ModeDSR, MaglevTableSize: 16381})
	if err != nil {
		t.Fatal(err)
	}
	if len(svcs) != 3 {
		t.Errorf("deploy/edge/edge.yaml has %d services, want 3", len(svcs))
	}
}
