package xdpbench

import (
	"fmt"
	"slices"
	"strings"

	"github.com/weir-lb/weir/bpf"
	"github.com/weir-lb/weir/lb"
)

// traffic is what the harness writes into the packets of a scenario.
type traffic int

const (
	// trafficNone: the template as it is, no harness (xdp-tx).
	trafficNone traffic = iota
	// trafficFlows cycles through the run's flow count, spread over the
	// services; the flows are established by a warm-up first.
	trafficFlows
	// trafficNew makes every packet a flow never seen before.
	trafficNew
	// trafficOther cycles through flows to addresses that are no
	// service.
	trafficOther
)

// rangeSet is which source ranges the services carry.
type rangeSet int

const (
	rangesNone rangeSet = iota
	// rangesDenied: one range per service that holds no client.
	rangesDenied
	// rangesAllowed: that range and the clients' one.
	rangesAllowed
)

// scenario is one benchmark case.
type scenario struct {
	name  string
	about string
	traffic
	// anyProgram: the scenario is a packet pattern any XDP program can
	// be measured on (its verdicts are reported, not checked); the
	// others configure Weir's services and need a program that uses
	// Weir's maps.
	anyProgram bool
	// stages: the scenario switches Weir's plug-in stages, which only
	// Weir's own program has.
	stages bool
	flags  lb.ServiceFlags
	ranges rangeSet
	// policyOn, overlayOn, sourceRangesOff: stage switches.
	policyOn, overlayOn, sourceRangesOff bool
	// verdict is what Weir answers every packet with.
	verdict uint32
	// encap: Weir's output must be a tunnel packet.
	encap bool
	// dropReason: Weir drops every packet for this reason.
	dropReason bpf.Reason
	// live: the scenario's packets reach the sink in live mode.
	live bool
}

// Scenario names.
const (
	ScenarioXDPTX            = "xdp-tx"
	ScenarioNoop             = "noop"
	ScenarioPassNonService   = "pass-non-service"
	ScenarioEstablished      = "established"
	ScenarioNewFlow          = "new-flow"
	ScenarioAffinity         = "affinity"
	ScenarioSourceRangeDeny  = "source-range-deny"
	ScenarioSourceRangeAllow = "source-range-allow"
	ScenarioSourceRangeOff   = "source-range-off"
	ScenarioPolicyStage      = "policy-stage"
	ScenarioOverlayStage     = "overlay-stage"
)

// affinityTimeout is the ClientIP timeout of the affinity scenario's
// services (Kubernetes' default).
const affinityTimeoutSeconds = 10800

var scenarios = []scenario{
	{name: ScenarioXDPTX, traffic: trafficNone, anyProgram: true, verdict: xdpTX, live: true,
		about: "a bare XDP_TX program, no harness: what the harness itself costs (noop - xdp-tx); the live baseline (plain hairpin)"},
	{name: ScenarioNoop, traffic: trafficFlows, anyProgram: true, verdict: xdpTX,
		about: "the harness tail calling XDP_TX: the test-run baseline of every ratio"},
	{name: ScenarioPassNonService, traffic: trafficOther, anyProgram: true, verdict: xdpPass,
		about: "a packet to an address that is no service: parse, one hash lookup, XDP_PASS"},
	{name: ScenarioEstablished, traffic: trafficFlows, anyProgram: true, verdict: xdpTX, encap: true, live: true,
		about: "an established flow: service lookup, conntrack hit, cached next hop, DSR encapsulation, XDP_TX"},
	{name: ScenarioNewFlow, traffic: trafficNew, anyProgram: true, verdict: xdpTX, encap: true, live: true,
		about: "a new flow per packet: conntrack miss, Maglev pick, conntrack insert (LRU eviction once full), FIB lookup, encapsulation"},
	{name: ScenarioAffinity, traffic: trafficNew, flags: lb.FlagAffinity, verdict: xdpTX, encap: true, live: true,
		about: "new flows of ClientIP-affinity services: affinity hit instead of Maglev, affinity refresh, conntrack insert, encapsulation"},
	{name: ScenarioSourceRangeDeny, traffic: trafficFlows, flags: lb.FlagSourceRanges, ranges: rangesDenied,
		verdict: xdpDrop, dropReason: bpf.ReasonSourceRange,
		about: "a client outside the service's source ranges: LPM lookup, drop counted and reported"},
	{name: ScenarioSourceRangeAllow, traffic: trafficFlows, flags: lb.FlagSourceRanges, ranges: rangesAllowed,
		verdict: xdpTX, encap: true, live: true,
		about: "established, on services with source ranges the client is in: the LPM lookup on the forwarding path"},
	{name: ScenarioSourceRangeOff, traffic: trafficFlows, stages: true, flags: lb.FlagSourceRanges, ranges: rangesDenied,
		sourceRangesOff: true, verdict: xdpTX, encap: true, live: true,
		about: "source-range-deny's services with the source-range stage switched off: load-balanced, no LPM lookup"},
	{name: ScenarioPolicyStage, traffic: trafficFlows, stages: true, policyOn: true, verdict: xdpTX, encap: true, live: true,
		about: "established with the pre-LB policy stage on (a pass-through stage program): two more tail calls"},
	{name: ScenarioOverlayStage, traffic: trafficFlows, stages: true, overlayOn: true, verdict: xdpTX, encap: true, live: true,
		about: "established with the post-LB overlay stage on (a stage program returning XDP_TX): one more tail call"},
}

// ScenarioNames lists every scenario in run order.
func ScenarioNames() []string {
	names := make([]string, len(scenarios))
	for i, s := range scenarios {
		names[i] = s.name
	}
	return names
}

// ScenarioAbout describes a scenario, "" for an unknown one.
func ScenarioAbout(name string) string {
	if s, ok := scenarioByName(name); ok {
		return s.about
	}
	return ""
}

func scenarioByName(name string) (scenario, bool) {
	for _, s := range scenarios {
		if s.name == name {
			return s, true
		}
	}
	return scenario{}, false
}

// selectScenarios returns the named scenarios in run order (all when
// names is empty) that can run in mode against a program with or without
// Weir's maps and stages. Naming one that can't is an error when strict;
// otherwise (all scenarios, or --mode both) those are left out.
func selectScenarios(names []string, m Mode, weirMaps, stages, strict bool) ([]scenario, error) {
	fits := func(s scenario) error {
		switch {
		case !s.anyProgram && !weirMaps:
			return fmt.Errorf("scenario %s needs Weir's service maps, and the program under test has none (run the packet scenarios: %s)", s.name, strings.Join(packetScenarios(), ","))
		case s.stages && !stages:
			return fmt.Errorf("scenario %s switches Weir's stages, which only Weir's own program has", s.name)
		case m == ModeLive && !s.live:
			if s.name == ScenarioNoop {
				return fmt.Errorf("scenario noop has no live form: the live generator is the harness, and the live baseline is %s, a plain XDP_TX on the device", ScenarioXDPTX)
			}
			return fmt.Errorf("scenario %s sends no packet to the sink, so live mode can't measure it (run it in test-run mode)", s.name)
		}
		return nil
	}
	if len(names) == 0 {
		var out []scenario
		for _, s := range scenarios {
			if fits(s) == nil {
				out = append(out, s)
			}
		}
		return out, nil
	}
	for _, n := range names {
		s, ok := scenarioByName(n)
		if !ok {
			return nil, fmt.Errorf("unknown scenario %q (known: %s)", n, strings.Join(ScenarioNames(), ","))
		}
		if err := fits(s); err != nil && strict {
			return nil, err
		}
	}
	var out []scenario
	for _, s := range scenarios {
		if slices.Contains(names, s.name) && fits(s) == nil {
			out = append(out, s)
		}
	}
	return out, nil
}

// packetScenarios are those any XDP program can run.
func packetScenarios() []string {
	var out []string
	for _, s := range scenarios {
		if s.anyProgram {
			out = append(out, s.name)
		}
	}
	return out
}
