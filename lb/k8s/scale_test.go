package k8s

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	coreinformers "k8s.io/client-go/informers/core/v1"
	discoveryinformers "k8s.io/client-go/informers/discovery/v1"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/tools/cache"

	"github.com/weir-lb/weir/lb"
)

// nullSink discards what a Source delivers.
type nullSink struct{ n int }

func (s *nullSink) Upsert(*lb.Service)        {}
func (s *nullSink) Delete(lb.ServiceName)     {}
func (s *nullSink) Replace(all []*lb.Service) { s.n = len(all) }
func (s *nullSink) Request()                  {}

// BenchmarkInitialTranslate: the source's part of the time from the
// caches' sync to the first full sync, at 10k services of 10 endpoints
// (the reconciler's part is in package lb).
func BenchmarkInitialTranslate(b *testing.B) {
	const nSvc, nEP = 10000, 10
	client := fake.NewClientset()
	c := &caches{
		services: coreinformers.NewServiceInformer(client, metav1.NamespaceAll, 0, cache.Indexers{}),
		slices: discoveryinformers.NewEndpointSliceInformer(client, metav1.NamespaceAll, 0,
			cache.Indexers{indexByService: sliceServiceIndex, indexByNode: sliceNodeIndex}),
		nodes: coreinformers.NewNodeInformer(client, 0, cache.Indexers{}),
	}
	for i := range nSvc {
		svc := service("scale", fmt.Sprintf("s%d", i), clusterIP(fmt.Sprintf("10.96.%d.%d", i/250, i%250+1)))
		eps := make([]discovery.Endpoint, nEP)
		for j := range eps {
			eps[j] = ep(netip.AddrFrom4([4]byte{10, byte(128 + j), byte(i / 250), byte(i%250 + 1)}).String())
		}
		if err := c.services.GetIndexer().Add(svc); err != nil {
			b.Fatal(err)
		}
		if err := c.slices.GetIndexer().Add(slice("scale", svc.Name, svc.Name+"-1", v4, ports(port("http", 8080)), eps...)); err != nil {
			b.Fatal(err)
		}
	}
	sink := &nullSink{}
	for b.Loop() {
		s := NewSource(client, Options{NodeName: "node-a"}, sink, nil)
		s.cache = c
		s.initialSync(time.Now(), time.Now())
	}
	if sink.n != nSvc {
		b.Fatalf("delivered %d services, want %d", sink.n, nSvc)
	}
}
