package xdpbench

import (
	"context"
	"errors"
	"os"
)

// SetupOptions describe one environment for Go benchmarks (go test
// -bench), which drive test runs themselves with b.N packets.
type SetupOptions struct {
	Services int // default 1
	IP       int // 4 (default) or 6
	Proto    string
	// Backends, TableSize, Object and Program as in Options.
	Backends, TableSize int
	Object, Program     string
}

// Setup is a live environment: the namespaces, the program under test and
// its services. Close removes everything.
type Setup struct {
	net      *network
	removeFn func() error
	env      *env
	weirMaps bool
}

// NewSetup builds an environment. It needs root.
func NewSetup(ctx context.Context, so SetupOptions) (_ *Setup, err error) {
	o := Options{Services: []int{max(so.Services, 1)}, Backends: so.Backends, TableSize: so.TableSize, Object: so.Object, Program: so.Program}
	if so.IP != 0 {
		o.IPs = []int{so.IP}
	}
	if so.Proto != "" {
		o.Protos = []string{so.Proto}
	}
	o = o.withDefaults()
	if err := o.validate(); err != nil {
		return nil, err
	}
	if os.Geteuid() != 0 {
		return nil, errors.New("the XDP benchmark creates network namespaces and loads BPF programs: run it as root")
	}
	s := &Setup{weirMaps: true}
	if o.Object != "" {
		spec, err := objectSpec(o.Object, o.Program)
		if err != nil {
			return nil, err
		}
		s.weirMaps = usesWeirMaps(spec)
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, s.Close())
		}
	}()
	if s.net, err = newNetwork(); err != nil {
		return nil, err
	}
	var dir string
	if dir, s.removeFn, err = bpffsDir(); err != nil {
		return nil, err
	}
	proto, _ := parseProto(o.Protos[0])
	if s.env, err = newEnv(ctx, s.net, dir, o, o.Services[0], o.IPs[0], proto); err != nil {
		return nil, err
	}
	return s, nil
}

// Case prepares the named scenario on frames of size bytes over flows
// flows (ignored by new-flow scenarios).
func (s *Setup) Case(ctx context.Context, scenario string, size, flows int) (*Case, error) {
	sel, err := selectScenarios([]string{scenario}, ModeTestRun, s.weirMaps, s.env.t.weir != nil, true)
	if err != nil {
		return nil, err
	}
	return s.env.newCase(ctx, sel[0], size, max(flows, 1))
}

// Close removes the environment, its pins and its namespaces.
func (s *Setup) Close() error {
	var errs []error
	if s.env != nil {
		errs = append(errs, s.env.close())
	}
	if s.removeFn != nil {
		errs = append(errs, s.removeFn())
	}
	if s.net != nil {
		errs = append(errs, s.net.close())
	}
	return errors.Join(errs...)
}
