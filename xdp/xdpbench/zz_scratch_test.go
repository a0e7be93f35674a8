package xdpbench

import (
	"context"
	"testing"

	"github.com/cilium/ebpf"
)

func TestZZTailCost(t *testing.T) {
	tx, err := constProg("tx", xdpTX, ebpf.AttachXDP, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Close()
	arr, _ := newTarget(tx)
	hop1, err := tailCallProg("hop1", arr, 0)
	if err != nil {
		t.Fatal(err)
	}
	arr2, _ := newTarget(hop1)
	hop2, _ := tailCallProg("hop2", arr2, 0)
	arr3, _ := newTarget(hop2)
	hop3, _ := tailCallProg("hop3", arr3, 0)
	tmpl, _ := template(4, protoTCP, 64, vipBase4, nil, nil)
	tmpl = append(make([]byte, 0), tmpl...)
	for _, p := range []struct {
		name string
		p    *ebpf.Program
	}{{"tx", tx}, {"1 hop", hop1}, {"2 hops", hop2}, {"3 hops", hop3}} {
		r, err := progRun(context.Background(), p.p, runOpts{data: make([]byte, 64), repeat: 1000000})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: %d ns (verdict %d)", p.name, r.nsPerRun, r.verdict)
	}
}
