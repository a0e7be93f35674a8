package sockmap

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The hooks act on sockets of tasks in the attached cgroup, and cgroup v2
// moves whole processes; so the clients of these tests are child processes
// (this test binary, re-executed) started inside the test's cgroup and
// network namespace. A child reads one JSON request per line on stdin and
// answers one JSON reply per line on stdout. It uses raw syscalls so that
// it controls the socket family (IPv4-mapped addresses on AF_INET6) and
// sees the exact errno.

// childEnv marks the re-executed test binary as a client child.
const childEnv = "WEIR_SOCKMAP_CHILD"

// request is one operation of the child.
type request struct {
	// Op is "dial" (connect, read the server's identity, getpeername,
	// close; Count times), "sendto" (unconnected UDP: sendto, recvfrom),
	// "open"/"talk"/"peer"/"close" (a TCP connection kept open across
	// requests; peer is its getpeername and socket cookie), "bind" (bind
	// and report the error) or "bench" (Count connects, timed).
	Op     string `json:"op"`
	Net    string `json:"net"`    // "tcp4", "tcp6", "udp4", "udp6": socket family and type
	Addr   string `json:"addr"`   // destination (or bind address), ip:port
	Bind   string `json:"bind"`   // optional local address to bind before dialling
	Count  int    `json:"count"`  // repetitions; 0 means 1
	Handle int    `json:"handle"` // for talk and close
	// Then is a second destination: "dial" connects the socket to Addr,
	// then again to Then, and talks to the second. A TCP socket asks for
	// its peer and disconnects (connect AF_UNSPEC) in between.
	Then string `json:"then,omitempty"`
	// PeerName makes "bench" time getpeername with each connect.
	PeerName bool `json:"peer_name,omitempty"`
}

// result is what one dial, send or bind observed.
type result struct {
	ID    string `json:"id,omitempty"`    // the identity line the backend sent
	Peer  string `json:"peer,omitempty"`  // getpeername
	From  string `json:"from,omitempty"`  // recvfrom's source address
	Errno int    `json:"errno,omitempty"` // the failing syscall's errno
	Err   string `json:"err,omitempty"`
	// Nanos is how long connect() took (bench and dial).
	Nanos int64 `json:"nanos,omitempty"`
	// Cookie is the socket's cookie (SO_COOKIE; peer).
	Cookie uint64 `json:"cookie,omitempty"`
}

type reply struct {
	Results []result `json:"results"`
	Handle  int      `json:"handle,omitempty"`
	// ConnectNanos sums the time spent in connect() over a bench; Nanos
	// has each connect's time.
	ConnectNanos int64   `json:"connect_nanos,omitempty"`
	Nanos        []int64 `json:"nanos,omitempty"`
	Errors       int     `json:"errors,omitempty"`
	FirstErr     string  `json:"first_err,omitempty"`
}

// childMain is the client child's main loop; it returns the exit code.
func childMain() int {
	in := bufio.NewScanner(os.Stdin)
	out := json.NewEncoder(os.Stdout)
	c := &childState{open: map[int]int{}}
	for in.Scan() {
		var req request
		if err := json.Unmarshal(in.Bytes(), &req); err != nil {
			fmt.Fprintln(os.Stderr, "child: bad request:", err)
			return 2
		}
		if err := out.Encode(c.do(req)); err != nil {
			return 2
		}
	}
	return 0
}

type childState struct {
	open map[int]int // handle -> fd
	next int
}

func (c *childState) do(req request) reply {
	n := max(req.Count, 1)
	switch req.Op {
	case "dial":
		var rep reply
		for range n {
			rep.Results = append(rep.Results, dialOnce(req))
		}
		return rep
	case "sendto":
		var rep reply
		for range n {
			rep.Results = append(rep.Results, sendtoOnce(req))
		}
		return rep
	case "open":
		fd, res := connectSock(req)
		if res.Err != "" {
			return reply{Results: []result{res}}
		}
		res = readIdentity(fd, res, false)
		c.next++
		c.open[c.next] = fd
		return reply{Results: []result{res}, Handle: c.next}
	case "talk":
		fd, ok := c.open[req.Handle]
		if !ok {
			return reply{Results: []result{{Err: "no such handle"}}}
		}
		if _, err := unix.Write(fd, []byte("again\n")); err != nil {
			return reply{Results: []result{errResult("write", err)}}
		}
		return reply{Results: []result{readIdentity(fd, result{}, false)}}
	case "peer":
		fd, ok := c.open[req.Handle]
		if !ok {
			return reply{Results: []result{{Err: "no such handle"}}}
		}
		return reply{Results: []result{peerOf(fd)}}
	case "close":
		if fd, ok := c.open[req.Handle]; ok {
			unix.Close(fd)
			delete(c.open, req.Handle)
		}
		return reply{}
	case "bind":
		return reply{Results: []result{bindOnce(req)}}
	case "bench":
		return benchConnects(req, n)
	}
	return reply{Results: []result{{Err: "unknown op " + req.Op}}}
}

func errResult(what string, err error) result {
	r := result{Err: what + ": " + err.Error()}
	var errno unix.Errno
	if errors.As(err, &errno) {
		r.Errno = int(errno)
	}
	return r
}

// sockaddr converts "ip:port" for a socket of the family of netw. An IPv4
// address on an IPv6 socket becomes IPv4-mapped.
func sockaddr(netw, s string) (unix.Sockaddr, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return nil, err
	}
	if strings.HasSuffix(netw, "6") {
		return &unix.SockaddrInet6{Port: int(ap.Port()), Addr: ap.Addr().As16()}, nil
	}
	if !ap.Addr().Unmap().Is4() {
		return nil, fmt.Errorf("%s is not IPv4", s)
	}
	return &unix.SockaddrInet4{Port: int(ap.Port()), Addr: ap.Addr().Unmap().As4()}, nil
}

func sockaddrString(sa unix.Sockaddr) string {
	switch a := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(a.Addr), uint16(a.Port)).String()
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(a.Addr), uint16(a.Port)).String()
	}
	return fmt.Sprintf("%v", sa)
}

func newSock(netw string) (int, error) {
	family, typ := unix.AF_INET, unix.SOCK_STREAM
	if strings.HasSuffix(netw, "6") {
		family = unix.AF_INET6
	}
	if strings.HasPrefix(netw, "udp") {
		typ = unix.SOCK_DGRAM
	}
	fd, err := unix.Socket(family, typ|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	// Bounded waits: a broken translation must fail the test, not hang it.
	tv := unix.Timeval{Sec: 3}
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv)
	return fd, nil
}

// connectSock makes a socket, binds it if asked, and connects it.
func connectSock(req request) (int, result) {
	fd, err := newSock(req.Net)
	if err != nil {
		return -1, errResult("socket", err)
	}
	if req.Bind != "" {
		sa, err := sockaddr(req.Net, req.Bind)
		if err == nil {
			err = unix.Bind(fd, sa)
		}
		if err != nil {
			unix.Close(fd)
			return -1, errResult("bind", err)
		}
	}
	sa, err := sockaddr(req.Net, req.Addr)
	if err != nil {
		unix.Close(fd)
		return -1, errResult("address", err)
	}
	if req.Then != "" {
		if err := connect(fd, sa); err != nil {
			unix.Close(fd)
			return -1, errResult("first connect", err)
		}
		if strings.HasPrefix(req.Net, "tcp") {
			if _, err := unix.Getpeername(fd); err != nil {
				unix.Close(fd)
				return -1, errResult("first getpeername", err)
			}
			if err := disconnect(fd); err != nil {
				unix.Close(fd)
				return -1, errResult("disconnect", err)
			}
		}
		if sa, err = sockaddr(req.Net, req.Then); err != nil {
			unix.Close(fd)
			return -1, errResult("address", err)
		}
	}
	start := time.Now()
	err = connect(fd, sa)
	res := result{Nanos: time.Since(start).Nanoseconds()}
	if err != nil {
		unix.Close(fd)
		r := errResult("connect", err)
		r.Nanos = res.Nanos
		return -1, r
	}
	return fd, res
}

// connect is a blocking connect(2) that a signal can't cut short. The Go
// runtime preempts goroutines with signals, and a connect interrupted
// while its handshake is under way returns EINTR with the handshake going
// on: wait for it as Go's net package does, then read its outcome.
func connect(fd int, sa unix.Sockaddr) error {
	err := unix.Connect(fd, sa)
	if err != unix.EINTR {
		return err
	}
	for {
		_, err := unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}, -1)
		if err == nil {
			break
		}
		if err != unix.EINTR {
			return err
		}
	}
	if errno, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR); err != nil {
		return err
	} else if errno != 0 {
		return unix.Errno(errno)
	}
	return nil
}

// disconnect dissolves a socket's association (connect with AF_UNSPEC),
// after which a TCP socket may connect again.
func disconnect(fd int) error {
	sa := unix.RawSockaddr{Family: unix.AF_UNSPEC}
	_, _, errno := unix.Syscall(unix.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(&sa)), unsafe.Sizeof(sa))
	if errno != 0 {
		return errno
	}
	return nil
}

// readIdentity reads the backend's identity: a line on TCP, a datagram on
// UDP (after sending one), with the source address when udp is true.
func readIdentity(fd int, res result, udp bool) result {
	if udp {
		if _, err := unix.Write(fd, []byte("hello\n")); err != nil {
			return errResult("send", err)
		}
	}
	buf := make([]byte, 256)
	var n int
	var from unix.Sockaddr
	var err error
	if udp {
		n, from, err = unix.Recvfrom(fd, buf, 0)
	} else {
		n, err = readLine(fd, buf)
	}
	if err != nil {
		return errResult("read", err)
	}
	res.ID = strings.TrimSpace(string(buf[:n]))
	if from != nil {
		res.From = sockaddrString(from)
	}
	return res
}

// readLine reads up to a newline, one byte at a time (the server's lines
// are short and each answer is one line).
func readLine(fd int, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := unix.Read(fd, buf[n:n+1])
		if err != nil {
			return n, err
		}
		if m == 0 {
			return n, errors.New("connection closed before a full line")
		}
		n++
		if buf[n-1] == '\n' {
			break
		}
	}
	return n, nil
}

func dialOnce(req request) result {
	fd, res := connectSock(req)
	if res.Err != "" {
		return res
	}
	defer unix.Close(fd)
	res = readIdentity(fd, res, strings.HasPrefix(req.Net, "udp"))
	if res.Err != "" {
		return res
	}
	peer, err := unix.Getpeername(fd)
	if err != nil {
		return errResult("getpeername", err)
	}
	res.Peer = sockaddrString(peer)
	return res
}

// peerOf is a connected socket's getpeername and cookie.
func peerOf(fd int) result {
	peer, err := unix.Getpeername(fd)
	if err != nil {
		return errResult("getpeername", err)
	}
	cookie, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_COOKIE)
	if err != nil {
		return errResult("SO_COOKIE", err)
	}
	return result{Peer: sockaddrString(peer), Cookie: cookie}
}

func sendtoOnce(req request) result {
	fd, err := newSock(req.Net)
	if err != nil {
		return errResult("socket", err)
	}
	defer unix.Close(fd)
	sa, err := sockaddr(req.Net, req.Addr)
	if err != nil {
		return errResult("address", err)
	}
	if err := unix.Sendto(fd, []byte("hello\n"), 0, sa); err != nil {
		return errResult("sendto", err)
	}
	buf := make([]byte, 256)
	n, from, err := unix.Recvfrom(fd, buf, 0)
	if err != nil {
		return errResult("recvfrom", err)
	}
	return result{ID: strings.TrimSpace(string(buf[:n])), From: sockaddrString(from)}
}

func bindOnce(req request) result {
	fd, err := newSock(req.Net)
	if err != nil {
		return errResult("socket", err)
	}
	defer unix.Close(fd)
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
	sa, err := sockaddr(req.Net, req.Bind)
	if err != nil {
		return errResult("address", err)
	}
	if err := unix.Bind(fd, sa); err != nil {
		return errResult("bind", err)
	}
	return result{}
}

// benchConnects connects n TCP sockets one after the other and sums the
// time spent in connect() alone (connect and getpeername with PeerName). Sockets close with an RST (linger 0) so
// that no TIME_WAIT piles up and exhausts the ephemeral ports.
func benchConnects(req request, n int) reply {
	var rep reply
	sa, err := sockaddr(req.Net, req.Addr)
	if err != nil {
		return reply{Errors: 1, FirstErr: err.Error()}
	}
	family := unix.AF_INET
	if strings.HasSuffix(req.Net, "6") {
		family = unix.AF_INET6
	}
	linger := unix.Linger{Onoff: 1, Linger: 0}
	for range n {
		fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return reply{Errors: 1, FirstErr: err.Error()}
		}
		start := time.Now()
		err = connect(fd, sa)
		if err == nil && req.PeerName {
			_, err = unix.Getpeername(fd)
		}
		d := time.Since(start).Nanoseconds()
		rep.ConnectNanos += d
		rep.Nanos = append(rep.Nanos, d)
		if err != nil {
			rep.Errors++
			if rep.FirstErr == "" {
				rep.FirstErr = err.Error()
			}
		}
		_ = unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &linger)
		unix.Close(fd)
	}
	return rep
}
