package xdpbench

import (
	"bufio"
	"cmp"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// PlotOptions choose the axes of a plot.
type PlotOptions struct {
	// X is "services" (default) or "flows", drawn on a log scale.
	X string
	// Y is "ns" (ns per packet, test-run results) or "pps" (live
	// results); default ns when there are test-run results.
	Y string
}

// series is one line of a plot.
type series struct {
	label  string
	points [][2]float64 // x, y sorted by x
}

// plotData turns results into series: one per scenario and setting of
// the other dimensions, labelled by the dimensions that differ.
func plotData(results []Result, po PlotOptions) (po2 PlotOptions, ss []series, err error) {
	if po.X == "" {
		po.X = "services"
	}
	if po.X != "services" && po.X != "flows" {
		return po, nil, fmt.Errorf("plot x axis %q: want services or flows", po.X)
	}
	if po.Y == "" {
		po.Y = "pps"
		for _, r := range results {
			if r.NsPerPacket != nil {
				po.Y = "ns"
				break
			}
		}
	}
	if po.Y != "ns" && po.Y != "pps" {
		return po, nil, fmt.Errorf("plot y axis %q: want ns or pps", po.Y)
	}
	type key struct {
		scenario, proto string
		mode            Mode
		ip, size, other int
	}
	var keys []key
	groups := map[key][][2]float64{}
	for _, r := range results {
		var y *float64
		if po.Y == "ns" {
			y = r.NsPerPacket
		} else {
			y = r.PPS
		}
		x, other := r.Services, r.Flows
		if po.X == "flows" {
			x, other = r.Flows, r.Services
		}
		if y == nil || x <= 0 { // a log axis has no place for 0 (new flows)
			continue
		}
		k := key{r.Scenario, r.Proto, r.Mode, r.IP, r.Size, other}
		if _, ok := groups[k]; !ok {
			keys = append(keys, k)
		}
		groups[k] = append(groups[k], [2]float64{float64(x), *y})
	}
	if len(keys) == 0 {
		return po, nil, fmt.Errorf("nothing to plot: no result has %s against %s (test-run results give ns, live results pps)", po.Y, po.X)
	}
	differs := func(f func(key) string) bool {
		for _, k := range keys {
			if f(k) != f(keys[0]) {
				return true
			}
		}
		return false
	}
	otherName := "flows"
	if po.X == "flows" {
		otherName = "services"
	}
	// The other dimension is named only when one scenario has lines for
	// several values of it (new-flow's flows=0 says nothing).
	otherVaries := false
	for _, a := range keys {
		for _, b := range keys {
			if a.scenario == b.scenario && a.other != b.other {
				otherVaries = true
			}
		}
	}
	for _, k := range keys {
		label := []string{k.scenario}
		if differs(func(k key) string { return string(k.mode) }) {
			label = append(label, string(k.mode))
		}
		if differs(func(k key) string { return fmt.Sprint(k.ip, k.proto) }) {
			label = append(label, fmt.Sprintf("ipv%d/%s", k.ip, k.proto))
		}
		if differs(func(k key) string { return strconv.Itoa(k.size) }) {
			label = append(label, fmt.Sprintf("%dB", k.size))
		}
		if otherVaries {
			label = append(label, fmt.Sprintf("%s=%d", otherName, k.other))
		}
		pts := groups[k]
		slices.SortFunc(pts, func(a, b [2]float64) int { return cmp.Compare(a[0], b[0]) })
		ss = append(ss, series{label: strings.Join(label, " "), points: pts})
	}
	return po, ss, nil
}

// frame is the geometry shared by the SVG and PNG writers.
type plotFrame struct {
	w, h                     int
	left, right, top, bottom int
	xmin, xmax, ymax         float64 // xmin/xmax as log10
	title, xlabel, ylabel    string
	xticks, yticks           []float64
}

func newPlotFrame(po PlotOptions, ss []series) plotFrame {
	f := plotFrame{w: 1000, h: 600, left: 90, right: 300, top: 50, bottom: 60}
	f.xmin, f.xmax = math.Inf(1), math.Inf(-1)
	for _, s := range ss {
		for _, p := range s.points {
			f.xmin = min(f.xmin, math.Log10(p[0]))
			f.xmax = max(f.xmax, math.Log10(p[0]))
			f.ymax = max(f.ymax, p[1])
		}
	}
	f.xmin, f.xmax = math.Floor(f.xmin), math.Ceil(f.xmax)
	if f.xmax == f.xmin {
		f.xmax = f.xmin + 1
	}
	for e := f.xmin; e <= f.xmax; e++ {
		f.xticks = append(f.xticks, e)
	}
	step := niceStep(f.ymax / 5)
	f.ymax = math.Ceil(f.ymax*1.05/step) * step
	for v := 0.0; v <= f.ymax+step/2; v += step {
		f.yticks = append(f.yticks, v)
	}
	f.xlabel = po.X
	if po.Y == "ns" {
		f.ylabel, f.title = "ns per packet", "weir bench xdp: ns per packet (test-run) by "+po.X
	} else {
		f.ylabel, f.title = "packets per second", "weir bench xdp: pps at the sink (live) by "+po.X
	}
	return f
}

// niceStep rounds a raw tick step to 1, 2 or 5 times a power of ten.
func niceStep(raw float64) float64 {
	if raw <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(raw)))
	for _, m := range []float64{1, 2, 5, 10} {
		if raw <= m*p {
			return m * p
		}
	}
	return 10 * p
}

func (f plotFrame) px(logx float64) float64 {
	return float64(f.left) + (logx-f.xmin)/(f.xmax-f.xmin)*float64(f.w-f.left-f.right)
}

func (f plotFrame) py(y float64) float64 {
	return float64(f.h-f.bottom) - y/f.ymax*float64(f.h-f.top-f.bottom)
}

func tickLabel(v float64) string {
	switch {
	case v >= 1e6 && math.Mod(v, 1e6) == 0:
		return strconv.FormatFloat(v/1e6, 'f', -1, 64) + "M"
	case v >= 1e3 && math.Mod(v, 1e3) == 0:
		return strconv.FormatFloat(v/1e3, 'f', -1, 64) + "k"
	}
	return strconv.FormatFloat(v, 'g', 4, 64)
}

var palette = []color.RGBA{
	{0x1f, 0x77, 0xb4, 0xff}, {0xff, 0x7f, 0x0e, 0xff}, {0x2c, 0xa0, 0x2c, 0xff}, {0xd6, 0x27, 0x28, 0xff},
	{0x94, 0x67, 0xbd, 0xff}, {0x8c, 0x56, 0x4b, 0xff}, {0xe3, 0x77, 0xc2, 0xff}, {0x7f, 0x7f, 0x7f, 0xff},
	{0xbc, 0xbd, 0x22, 0xff}, {0x17, 0xbe, 0xcf, 0xff},
}

// WritePlot draws results as format "svg" or "png" to w.
func WritePlot(w io.Writer, format string, results []Result, po PlotOptions) error {
	po, ss, err := plotData(results, po)
	if err != nil {
		return err
	}
	f := newPlotFrame(po, ss)
	switch format {
	case "svg":
		return writeSVG(w, f, ss)
	case "png":
		return png.Encode(w, drawPNG(f, ss))
	}
	return fmt.Errorf("plot format %q: want svg or png", format)
}

// PlotFile writes a plot to path, the format from its extension (.svg or
// .png).
func PlotFile(path string, results []Result, po PlotOptions) error {
	format := strings.TrimPrefix(strings.ToLower(filepath.Ext(path)), ".")
	if format != "svg" && format != "png" {
		return fmt.Errorf("plot file %s: name it .svg or .png", path)
	}
	out, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("create plot file: %w", err)
	}
	bw := bufio.NewWriter(out)
	err = WritePlot(bw, format, results, po)
	if ferr := bw.Flush(); err == nil {
		err = ferr
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(path)
	}
	return err
}

func writeSVG(w io.Writer, f plotFrame, ss []series) error {
	bw := bufio.NewWriter(w)
	p := func(format string, args ...any) { fmt.Fprintf(bw, format, args...) }
	esc := func(s string) string {
		return strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", `"`, "&quot;").Replace(s)
	}
	p(`<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n", f.w, f.h, f.w, f.h)
	p(`<rect width="100%%" height="100%%" fill="white"/>` + "\n")
	p(`<text x="%d" y="25" font-size="16">%s</text>`+"\n", f.left, esc(f.title))
	x0, x1, y0, y1 := float64(f.left), float64(f.w-f.right), float64(f.h-f.bottom), float64(f.top)
	for _, t := range f.yticks {
		y := f.py(t)
		p(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ddd"/>`+"\n", x0, y, x1, y)
		p(`<text x="%.1f" y="%.1f" text-anchor="end">%s</text>`+"\n", x0-6, y+4, tickLabel(t))
	}
	for _, t := range f.xticks {
		x := f.px(t)
		p(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="#ddd"/>`+"\n", x, y0, x, y1)
		p(`<text x="%.1f" y="%.1f" text-anchor="middle">%s</text>`+"\n", x, y0+18, tickLabel(math.Pow(10, t)))
	}
	p(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="black"/>`+"\n", x0, y0, x1, y0)
	p(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="black"/>`+"\n", x0, y0, x0, y1)
	p(`<text x="%.1f" y="%d" text-anchor="middle">%s (log scale)</text>`+"\n", (x0+x1)/2, f.h-15, esc(f.xlabel))
	p(`<text transform="translate(20 %.1f) rotate(-90)" text-anchor="middle">%s</text>`+"\n", (y0+y1)/2, esc(f.ylabel))
	for i, s := range ss {
		c := palette[i%len(palette)]
		col := fmt.Sprintf("#%02x%02x%02x", c.R, c.G, c.B)
		var pts []string
		for _, pt := range s.points {
			pts = append(pts, fmt.Sprintf("%.1f,%.1f", f.px(math.Log10(pt[0])), f.py(pt[1])))
		}
		p(`<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>`+"\n", col, strings.Join(pts, " "))
		for _, pt := range s.points {
			p(`<circle cx="%.1f" cy="%.1f" r="3" fill="%s"/>`+"\n", f.px(math.Log10(pt[0])), f.py(pt[1]), col)
		}
		ly := float64(f.top + 10 + 18*i)
		p(`<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" stroke="%s" stroke-width="2"/>`+"\n", x1+15, ly, x1+35, ly, col)
		p(`<text x="%.1f" y="%.1f">%s</text>`+"\n", x1+40, ly+4, esc(s.label))
	}
	p("</svg>\n")
	return bw.Flush()
}

// canvas is a PNG being drawn.
type canvas struct{ img *image.RGBA }

func (c canvas) set(x, y int, col color.RGBA) {
	if image.Pt(x, y).In(c.img.Rect) {
		c.img.SetRGBA(x, y, col)
	}
}

// line draws a line of width w (Bresenham, thickened with a square pen).
func (c canvas) line(x0, y0, x1, y1 int, w int, col color.RGBA) {
	dx, dy := abs(x1-x0), -abs(y1-y0)
	sx, sy := sign(x1-x0), sign(y1-y0)
	e := dx + dy
	for {
		for i := 0; i < w; i++ {
			for j := 0; j < w; j++ {
				c.set(x0+i-w/2, y0+j-w/2, col)
			}
		}
		if x0 == x1 && y0 == y1 {
			return
		}
		e2 := 2 * e
		if e2 >= dy {
			e += dy
			x0 += sx
		}
		if e2 <= dx {
			e += dx
			y0 += sy
		}
	}
}

// text draws s with its top left at (x, y), each font pixel scale wide.
func (c canvas) text(x, y int, s string, scale int, col color.RGBA) {
	for _, r := range s {
		g := glyph(r)
		for row, bits := range g {
			for i, b := range bits {
				if b != '#' {
					continue
				}
				for a := 0; a < scale; a++ {
					for d := 0; d < scale; d++ {
						c.set(x+i*scale+a, y+row*scale+d, col)
					}
				}
			}
		}
		x += (glyphW + 1) * scale
	}
}

func textWidth(s string, scale int) int { return len([]rune(s)) * (glyphW + 1) * scale }

func drawPNG(f plotFrame, ss []series) *image.RGBA {
	c := canvas{image.NewRGBA(image.Rect(0, 0, f.w, f.h))}
	white, black, grid := color.RGBA{255, 255, 255, 255}, color.RGBA{0, 0, 0, 255}, color.RGBA{0xdd, 0xdd, 0xdd, 255}
	for y := 0; y < f.h; y++ {
		for x := 0; x < f.w; x++ {
			c.img.SetRGBA(x, y, white)
		}
	}
	x0, x1, y0, y1 := f.left, f.w-f.right, f.h-f.bottom, f.top
	for _, t := range f.yticks {
		y := int(f.py(t))
		c.line(x0, y, x1, y, 1, grid)
		l := tickLabel(t)
		c.text(x0-8-textWidth(l, 1), y-3, l, 1, black)
	}
	for _, t := range f.xticks {
		x := int(f.px(t))
		c.line(x, y0, x, y1, 1, grid)
		l := tickLabel(math.Pow(10, t))
		c.text(x-textWidth(l, 1)/2, y0+8, l, 1, black)
	}
	c.line(x0, y0, x1, y0, 1, black)
	c.line(x0, y0, x0, y1, 1, black)
	c.text(x0, 15, f.title, 2, black)
	xl := f.xlabel + " (log scale)"
	c.text((x0+x1)/2-textWidth(xl, 1)/2, f.h-25, xl, 1, black)
	c.text(5, y1-20, f.ylabel, 1, black)
	for i, s := range ss {
		col := palette[i%len(palette)]
		var px, py int
		for j, pt := range s.points {
			x, y := int(f.px(math.Log10(pt[0]))), int(f.py(pt[1]))
			if j > 0 {
				c.line(px, py, x, y, 2, col)
			}
			for a := -3; a <= 3; a++ {
				for b := -3; b <= 3; b++ {
					c.set(x+a, y+b, col)
				}
			}
			px, py = x, y
		}
		ly := f.top + 10 + 18*i
		c.line(x1+15, ly, x1+35, ly, 2, col)
		c.text(x1+40, ly-3, s.label, 1, black)
	}
	return c.img
}

func abs(v int) int {
	if v < 0 {
		return -v
	}
	return v
}

func sign(v int) int {
	switch {
	case v > 0:
		return 1
	case v < 0:
		return -1
	}
	return 0
}
