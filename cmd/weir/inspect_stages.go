package main

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/tabwriter"

	"github.com/cilium/ebpf/link"

	"github.com/weir-lb/weir/xdp"
)

// StagesView is one device's XDP program as `weir inspect stages -o json`
// prints it. The field names are a contract (docs/OBSERVABILITY.md).
type StagesView struct {
	Device string `json:"device"`
	// Attached is false when the device went away under the link (the
	// link is defunct; an agent restart attaches afresh).
	Attached  bool            `json:"attached"`
	Ifindex   uint32          `json:"ifindex"`
	LinkID    uint32          `json:"link_id"`
	ProgramID uint32          `json:"program_id"`
	Stages    map[string]bool `json:"stages"` // by stage name: policy, overlay, source-ranges
}

// stageOrder is the column order of the table: packet order.
var stageOrder = []xdp.Stage{xdp.StagePolicy, xdp.StageSourceRanges, xdp.StageOverlay}

// inspectStages reads every XDP link pinned under root, and the stage
// bits of the program each runs.
func inspectStages(w io.Writer, root string, asJSON bool) error {
	if _, err := os.Stat(root); err != nil {
		return fmt.Errorf("no Weir pins under %s (is the agent's --bpf-root elsewhere?): %w", root, err)
	}
	pins, err := filepath.Glob(filepath.Join(root, "links", "xdp_*"))
	if err != nil {
		return err
	}
	sort.Strings(pins)
	views := []StagesView{}
	for _, pin := range pins {
		v, err := stagesView(pin)
		if err != nil {
			return err
		}
		views = append(views, v)
	}
	if asJSON {
		return writeJSON(w, views)
	}
	return stagesTable(w, views)
}

func stagesView(pin string) (StagesView, error) {
	v := StagesView{Device: strings.TrimPrefix(filepath.Base(pin), "xdp_"), Stages: map[string]bool{}}
	l, err := link.LoadPinnedLink(pin, nil)
	if err != nil {
		return v, fmt.Errorf("open pinned link %s: %w", pin, err)
	}
	info, err := l.Info()
	l.Close()
	if err != nil {
		return v, fmt.Errorf("read link %s: %w", pin, err)
	}
	v.LinkID, v.ProgramID = uint32(info.ID), uint32(info.Program)
	if x := info.XDP(); x != nil {
		v.Ifindex = x.Ifindex
	}
	v.Attached = v.Ifindex != 0
	stages, err := xdp.ReadStages(pin)
	if err != nil {
		return v, err
	}
	for s, on := range stages {
		v.Stages[s.String()] = on
	}
	return v, nil
}

func onOff(on, known bool) string {
	switch {
	case !known:
		return "?"
	case on:
		return "on"
	}
	return "off"
}

func stagesTable(w io.Writer, views []StagesView) error {
	if len(views) == 0 {
		_, err := fmt.Fprintln(w, "no XDP links pinned: the agent runs on no device (--devices)")
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	head := []string{"DEVICE", "ATTACHED", "LINK", "PROGRAM"}
	for _, s := range stageOrder {
		head = append(head, strings.ToUpper(s.String()))
	}
	fmt.Fprintln(tw, strings.Join(head, "\t"))
	for _, v := range views {
		row := []string{v.Device, fmt.Sprint(v.Attached), fmt.Sprint(v.LinkID), fmt.Sprint(v.ProgramID)}
		for _, s := range stageOrder {
			on, known := v.Stages[s.String()]
			row = append(row, onOff(on, known))
		}
		fmt.Fprintln(tw, strings.Join(row, "\t"))
	}
	return tw.Flush()
}
