package health

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"time"

	"github.com/weir-lb/weir/lb"
)

// prober runs one probe against addr and returns why it failed, or nil.
type prober func(ctx context.Context, addr netip.AddrPort, hc *lb.HealthCheck) error

// netProber probes over real sockets.
type netProber struct {
	client *http.Client
}

func newNetProber() *netProber {
	return &netProber{client: &http.Client{
		Transport: &http.Transport{
			// No Proxy: a probe must reach the backend itself, whatever
			// HTTP_PROXY the agent's environment has.
			Proxy:             nil,
			DisableKeepAlives: true,
			// Bodies are discarded; asking for gzip would only cost CPU.
			DisableCompression: true,
		},
		// A redirect is an answer: the backend is up.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}}
}

func (p *netProber) probe(ctx context.Context, addr netip.AddrPort, hc *lb.HealthCheck) error {
	ctx, cancel := context.WithTimeout(ctx, hc.Timeout)
	defer cancel()
	switch hc.Type {
	case "tcp":
		return probeTCP(ctx, addr)
	case "http":
		return p.probeHTTP(ctx, addr, hc.Path)
	}
	return fmt.Errorf("health check type %q is not known (use tcp or http)", hc.Type)
}

func probeTCP(ctx context.Context, addr netip.AddrPort) error {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr.String())
	if err != nil {
		return err
	}
	return conn.Close()
}

// maxBody is how much of an answer is read before closing: enough for
// the connection to end cleanly, not so much that a chatty health page
// costs anything.
const maxBody = 4 << 10

func (p *netProber) probeHTTP(ctx context.Context, addr netip.AddrPort, path string) error {
	url := "http://" + addr.String() + path
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("health check URL %s: %w", url, err)
	}
	req.Header.Set("User-Agent", "weir-health-check")
	resp, err := p.client.Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxBody))
	_ = resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 399 {
		return fmt.Errorf("GET %s: HTTP %s (want 2xx or 3xx)", url, resp.Status)
	}
	return nil
}

// firstDelay spreads the first probes of many targets over an interval.
func firstDelay(interval time.Duration) time.Duration {
	if interval <= 1 {
		return 0
	}
	return rand.N(interval)
}
