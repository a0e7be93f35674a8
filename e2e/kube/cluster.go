package kube

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

var loopback = netip.MustParseAddr("127.0.0.1")

// Options shape a test cluster. The zero value is a cluster on loopback.
type Options struct {
	// BindAddr is the address the apiserver listens on and advertises.
	// Default 127.0.0.1, which only the root namespace can reach; for
	// clients inside a test netns use an address from RootVeth.
	BindAddr netip.Addr
	// ServiceCIDR is --service-cluster-ip-range of a single-stack
	// cluster. Default 10.96.0.0/16. Ignored when ServiceCIDRs is set.
	ServiceCIDR netip.Prefix
	// ServiceCIDRs makes the cluster dual-stack: --service-cluster-ip-range
	// gets both prefixes, the first one's family being the primary (the
	// family of single-stack services). DualStackServiceCIDRs is the usual
	// pair.
	ServiceCIDRs []netip.Prefix
}

// DualStackServiceCIDRs are the service ranges of an IPv4-primary
// dual-stack test cluster.
var DualStackServiceCIDRs = []netip.Prefix{
	netip.MustParsePrefix("10.96.0.0/16"),
	netip.MustParsePrefix("fd00:96::/108"),
}

// serviceRange is the value of --service-cluster-ip-range.
func (o Options) serviceRange() string {
	if len(o.ServiceCIDRs) == 0 {
		return o.ServiceCIDR.String()
	}
	parts := make([]string, len(o.ServiceCIDRs))
	for i, p := range o.ServiceCIDRs {
		parts[i] = p.String()
	}
	return strings.Join(parts, ",")
}

// Cluster is a running etcd + kube-apiserver pair.
type Cluster struct {
	// Kubeconfig is the path of a kubeconfig with the admin token, for
	// kube-proxy, kubectl or an agent under test.
	Kubeconfig string
	// Client talks to the apiserver as the admin (group system:masters),
	// without client-side rate limiting.
	Client kubernetes.Interface
	// Addr is the apiserver's secure address.
	Addr netip.AddrPort
	// Token is the admin bearer token.
	Token string
	// REST is the client configuration behind Client.
	REST *rest.Config
	// Dir holds the logs, keys, certificates and etcd data; it is removed
	// when the test ends.
	Dir string

	APIServer, Etcd *Process
	opts            Options
}

const apiserverReadyTimeout = 60 * time.Second

// StartCluster starts etcd and kube-apiserver (authorization AlwaysAllow,
// bearer-token authentication), waits until /readyz answers 200 and returns
// a Cluster with a client and a kubeconfig. Cleanup stops the apiserver
// before etcd (an apiserver whose etcd is gone hangs on SIGTERM), and on
// failure prints the end of both logs. The first call builds the binaries,
// see Binaries.
func StartCluster(tb testing.TB, opts Options) *Cluster {
	tb.Helper()
	if !opts.BindAddr.IsValid() {
		opts.BindAddr = loopback
	}
	if !opts.ServiceCIDR.IsValid() && len(opts.ServiceCIDRs) == 0 {
		opts.ServiceCIDR = netip.MustParsePrefix("10.96.0.0/16")
	}
	apiserverBin, _, _ := Binaries(tb)

	c := &Cluster{Dir: tb.TempDir(), Token: randomHex(16), opts: opts}
	// Cleanups run last-in first-out: registering etcd's stop first makes
	// the apiserver's stop run before it.
	var etcdURL string
	c.Etcd, etcdURL = startEtcd(tb, c.Dir)
	if err := c.writeAuthFiles(); err != nil {
		tb.Fatal(err)
	}
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		var err error
		if err = c.startAPIServer(apiserverBin, etcdURL); err == nil {
			lastErr = nil
			break
		}
		lastErr = err
		if !strings.Contains(err.Error(), "address already in use") {
			break
		}
	}
	if lastErr != nil {
		tb.Fatal(lastErr)
	}
	stopInCleanup(tb, c.APIServer, 10*time.Second)

	c.REST = &rest.Config{
		Host:            "https://" + c.Addr.String(),
		BearerToken:     c.Token,
		TLSClientConfig: rest.TLSClientConfig{Insecure: true},
		// Tests create hundreds of objects; client-go's default 5 QPS
		// would make the client the thing being measured.
		QPS:   -1,
		Burst: -1,
		// Deprecation warnings (spec.externalIPs) would otherwise go to
		// stderr through klog, outside the test log.
		WarningHandler: rest.NoWarnings{},
	}
	cs, err := kubernetes.NewForConfig(c.REST)
	if err != nil {
		tb.Fatalf("client for %s: %v", c.REST.Host, err)
	}
	c.Client = cs
	c.Kubeconfig = filepath.Join(c.Dir, "kubeconfig")
	if err := c.writeKubeconfig(); err != nil {
		tb.Fatal(err)
	}
	return c
}

func (c *Cluster) path(name string) string { return filepath.Join(c.Dir, name) }

// writeAuthFiles writes the service-account signing key pair (the
// apiserver refuses to start without one) and the static token file that
// makes Token an admin.
func (c *Cluster) writeAuthFiles() error {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return fmt.Errorf("service-account key: %w", err)
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return err
	}
	files := map[string][]byte{
		"sa.key":     pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)}),
		"sa.pub":     pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pub}),
		"tokens.csv": []byte(c.Token + `,admin,admin,"system:masters"` + "\n"),
	}
	for name, data := range files {
		if err := os.WriteFile(c.path(name), data, 0o600); err != nil {
			return fmt.Errorf("write %s: %w", c.path(name), err)
		}
	}
	return nil
}

func (c *Cluster) startAPIServer(bin, etcdURL string) error {
	port, err := freePort(c.opts.BindAddr)
	if err != nil {
		return fmt.Errorf("%w (is %s assigned to a local interface?)", err, c.opts.BindAddr)
	}
	c.Addr = netip.AddrPortFrom(c.opts.BindAddr, uint16(port))
	args := []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=" + c.opts.BindAddr.String(),
		"--advertise-address=" + c.opts.BindAddr.String(),
		"--secure-port=" + strconv.Itoa(port),
		"--cert-dir=" + c.path("certs"),
		"--service-cluster-ip-range=" + c.opts.serviceRange(),
		"--service-account-issuer=https://kubernetes.default.svc",
		"--service-account-key-file=" + c.path("sa.pub"),
		"--service-account-signing-key-file=" + c.path("sa.key"),
		"--token-auth-file=" + c.path("tokens.csv"),
		"--authorization-mode=AlwaysAllow",
	}
	if c.opts.BindAddr.IsLoopback() {
		// The endpoint reconciler refuses a loopback advertise address.
		args = append(args, "--endpoint-reconciler-type=none")
	}
	p, err := startProcess("kube-apiserver", c.path("kube-apiserver.log"), exec.Command(bin, args...))
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), apiserverReadyTimeout)
	defer cancel()
	if err := c.waitReady(ctx, p); err != nil {
		_ = p.Stop(10 * time.Second)
		return fmt.Errorf("kube-apiserver on %s: %w\n---- kube-apiserver log, end ----\n%s", c.Addr, err, p.Tail(8<<10))
	}
	c.APIServer = p
	return nil
}

// waitReady polls /readyz with the admin token: with AlwaysAllow an
// anonymous probe gets 401 even from a ready server.
func (c *Cluster) waitReady(ctx context.Context, p *Process) error {
	client := &http.Client{
		Timeout:   2 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}},
	}
	defer client.CloseIdleConnections()
	url := "https://" + c.Addr.String() + "/readyz"
	var last string
	for {
		if done, err := p.Exited(); done {
			return fmt.Errorf("exited before it was ready: %v", err)
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		req.Header.Set("Authorization", "Bearer "+c.Token)
		resp, err := client.Do(req)
		if err == nil {
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = fmt.Sprintf("%d %s", resp.StatusCode, strings.TrimSpace(string(body)))
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("/readyz not 200 after %s (last answer: %s)", apiserverReadyTimeout, last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (c *Cluster) writeKubeconfig() error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["weir-test"] = &clientcmdapi.Cluster{Server: c.REST.Host, InsecureSkipTLSVerify: true}
	cfg.AuthInfos["admin"] = &clientcmdapi.AuthInfo{Token: c.Token}
	cfg.Contexts["weir-test"] = &clientcmdapi.Context{Cluster: "weir-test", AuthInfo: "admin"}
	cfg.CurrentContext = "weir-test"
	if err := clientcmd.WriteToFile(*cfg, c.Kubeconfig); err != nil {
		return fmt.Errorf("write kubeconfig %s: %w", c.Kubeconfig, err)
	}
	return nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
