package topo

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// HTTPGet makes one HTTP/1.0 GET on a connection dialled from the calling
// thread. Use it inside Host.Do: http.Client dials from goroutines of its
// own, which may run in another network namespace.
func HTTPGet(addr, path string, timeout time.Duration) (int, string, error) {
	conn, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return 0, "", err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(timeout))
	if _, err := fmt.Fprintf(conn, "GET %s HTTP/1.0\r\nHost: weir\r\n\r\n", path); err != nil {
		return 0, "", err
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}
