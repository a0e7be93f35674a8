package bpf

import "structs"

// Go mirrors of the socket load balancer's structs in bpf/include/types.h
// (see types.go for the layout rules).

// SockPeer must match struct sock_peer in bpf/include/types.h: the reverse
// NAT of one connected socket, kept in weir_sock_peer (socket local
// storage, readable only through a socket's file descriptor).
type SockPeer struct {
	_            structs.HostLayout
	Backend      Addr
	Frontend     Addr
	BackendPort  Port
	FrontendPort Port
	FrontendID   uint32
}
