package main

import (
	"context"
	"net/netip"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

func testPod(name, ip string, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: name, Labels: labels},
		Status:     corev1.PodStatus{PodIPs: []corev1.PodIP{{IP: ip}}},
	}
}

// Events name the client's and backend's pods, following pods as they
// come, change and go.
func TestPodIndexAnnotatesEvents(t *testing.T) {
	client := fake.NewSimpleClientset(
		testPod("web-1", "10.244.1.5", map[string]string{"app": "web"}),
		testPod("cart-1", "10.244.2.9", map[string]string{"app": "cart"}),
	)
	hostNet := testPod("agent", "192.0.2.1", nil)
	hostNet.Spec.HostNetwork = true
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	x := newPodIndex()
	if err := x.watchPods(ctx, client); err != nil {
		t.Fatal(err)
	}
	v := EventView{src: netip.MustParseAddr("10.244.2.9"), backend: netip.MustParseAddr("10.244.1.5")}
	x.annotate(&v)
	if v.ClientPod == nil || v.ClientPod.Pod != "shop/cart-1" || v.ClientPod.Labels["app"] != "cart" {
		t.Errorf("client pod %+v", v.ClientPod)
	}
	if v.BackendPod == nil || v.BackendPod.Pod != "shop/web-1" {
		t.Errorf("backend pod %+v", v.BackendPod)
	}

	_, err := client.CoreV1().Pods("shop").Create(ctx, hostNet, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if err := client.CoreV1().Pods("shop").Delete(ctx, "web-1", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for x.lookup(netip.MustParseAddr("10.244.1.5")) != nil {
		if time.Now().After(deadline) {
			t.Fatal("a deleted pod still labels its address")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if x.lookup(netip.MustParseAddr("192.0.2.1")) != nil {
		t.Error("a host-network pod claimed the node's address")
	}
}
