package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/pflag"
)

// runDemoBackend serves the demo's backend: "/" answers with the backend's
// name followed by a padding of --size bytes (so DSR's bypass shows in byte
// counters), "/healthz" answers 200. The server closes every connection
// after one response, so clients can reuse their ports at once.
func runDemoBackend(ctx context.Context, args []string) error {
	fs := pflag.NewFlagSet("demo-backend", pflag.ContinueOnError)
	name := fs.String("name", "backend", "name to answer with")
	listen := fs.String("listen", "0.0.0.0:8080", "address to listen on")
	size := fs.Int("size", 64<<10, "padding bytes after the name")
	udp := fs.String("udp", "", "also answer UDP datagrams on this address with the backend's name")
	if err := fs.Parse(args); err != nil {
		return err
	}
	padding := strings.Repeat(".", *size)
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
	// /slow trickles the padding over ?ms= milliseconds: a long-lived
	// connection for tests that change the backend set mid-stream.
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		ms, _ := strconv.Atoi(r.URL.Query().Get("ms"))
		w.Header().Set("Connection", "close")
		fmt.Fprintf(w, "%s\n", *name)
		const chunks = 20
		for i := 0; i < chunks; i++ {
			time.Sleep(time.Duration(ms) * time.Millisecond / chunks)
			fmt.Fprint(w, padding[:len(padding)/chunks])
			if f, ok := w.(http.Flusher); ok {
				f.Flush()
			}
		}
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Connection", "close")
		fmt.Fprintf(w, "%s\n%s", *name, padding)
	})
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	if *udp != "" {
		pc, err := net.ListenPacket("udp", *udp)
		if err != nil {
			return err
		}
		defer pc.Close()
		go serveUDPName(pc, *name)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// serveUDPName answers every datagram with the backend's name. For DSR,
// bind it to the VIP: a wildcard UDP socket would answer from the
// interface's address, which the client doesn't expect.
func serveUDPName(pc net.PacketConn, name string) {
	buf := make([]byte, 2048)
	for {
		_, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		_, _ = pc.WriteTo([]byte(name), from)
	}
}
