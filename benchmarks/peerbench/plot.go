package main

import (
	"fmt"
	"image/color"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"go.etcd.io/etcd/api/v3/version"
	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

var (
	gridkvColor = color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff}
	etcdColor   = color.RGBA{R: 0xff, G: 0x7f, B: 0x0e, A: 0xff}
)

// writePlot draws two panels into one PNG at path: median throughput per
// workload on a log scale (Stale reads run orders of magnitude faster than
// the rest), GridKV's bar beside etcd's with the ratio under each name;
// and median p99 latency the same way, on a linear scale.
func writePlot(path string, outcomes []outcome, o options) error {
	var names, ratioNames []string
	var gOps, eOps, gP99, eP99 plotter.Values
	for _, oc := range outcomes {
		g, e := medians(oc.gridkv), medians(oc.etcd)
		names = append(names, oc.name)
		ratioNames = append(ratioNames, fmt.Sprintf("%s\nGridKV/etcd %.2fx", oc.name, oc.ratio()))
		gOps, eOps = append(gOps, g.opsPerSec), append(eOps, e.opsPerSec)
		gP99, eP99 = append(gP99, g.p99.Seconds()*1000), append(eP99, e.p99.Seconds()*1000)
	}
	throughput, err := groupedBars(gOps, eOps, ratioNames, true, countLabel)
	if err != nil {
		return err
	}
	throughput.Title.Text = fmt.Sprintf("Throughput (ops/s, log scale), median of %d runs of %v", o.runs, o.seconds)
	latency, err := groupedBars(gP99, eP99, names, false, func(ms float64) string {
		return short(time.Duration(ms * float64(time.Millisecond))).String()
	})
	if err != nil {
		return err
	}
	latency.Title.Text = fmt.Sprintf("p99 latency (ms), median of %d runs", o.runs)

	img := vgimg.New(11*vg.Inch, 9*vg.Inch)
	dc := draw.New(img)
	caption := fmt.Sprintf("GridKV vs etcd %s: %d nodes each in one process, %d clients, %d keys x %d B; %d CPUs, GOMAXPROCS %d, %s",
		version.Version, o.nodes, o.clients, o.keys, o.valueBytes, runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.Version())
	style := throughput.Title.TextStyle
	style.XAlign, style.YAlign = draw.XCenter, draw.YTop
	dc.FillText(style, vg.Point{X: dc.Center().X, Y: dc.Max.Y - vg.Points(6)}, caption)
	tiles := draw.Tiles{Rows: 2, Cols: 1, PadTop: vg.Points(26), PadBottom: vg.Points(8),
		PadLeft: vg.Points(8), PadRight: vg.Points(12), PadY: vg.Points(18)}
	canvases := plot.Align([][]*plot.Plot{{throughput}, {latency}}, tiles, dc)
	throughput.Draw(canvases[0][0])
	latency.Draw(canvases[1][0])

	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// groupedBars is a bar chart with one group per name, GridKV's bar left of
// etcd's, each labelled with its value. On a log scale the bars stand on
// an invisible base at the axis minimum, since a log axis has no zero.
func groupedBars(gridkvVals, etcdVals plotter.Values, names []string, logScale bool, label func(float64) string) (*plot.Plot, error) {
	p := plot.New()
	const width = vg.Length(28)
	lo, hi := math.Inf(1), 0.0
	for _, v := range append(append(plotter.Values{}, gridkvVals...), etcdVals...) {
		if v > 0 {
			lo = min(lo, v)
		}
		hi = max(hi, v)
	}
	if hi == 0 {
		lo, hi = 1, 1
	}
	p.Y.Min, p.Y.Max = 0, hi*1.2 // room for the legend and the labels
	var base *plotter.BarChart
	if logScale {
		p.Y.Min = math.Pow10(int(math.Floor(math.Log10(lo))))
		p.Y.Max = math.Pow10(int(math.Ceil(math.Log10(hi * 3))))
		p.Y.Scale, p.Y.Tick.Marker = plot.LogScale{}, logTicks{}
		floor := make(plotter.Values, len(names))
		for i := range floor {
			floor[i] = p.Y.Min
		}
		var err error
		if base, err = plotter.NewBarChart(floor, width); err != nil {
			return nil, err
		}
	}
	for side, s := range []struct {
		name  string
		vals  plotter.Values
		color color.Color
	}{{"GridKV", gridkvVals, gridkvColor}, {"etcd", etcdVals, etcdColor}} {
		offset := width / 2
		if side == 0 {
			offset = -offset
		}
		heights := append(plotter.Values{}, s.vals...)
		if base != nil {
			for i := range heights {
				heights[i] = max(heights[i]-p.Y.Min, 0)
			}
		}
		bars, err := plotter.NewBarChart(heights, width)
		if err != nil {
			return nil, err
		}
		bars.Color, bars.LineStyle.Width, bars.Offset = s.color, 0, offset
		if base != nil {
			base.Offset = offset
			bars.StackOn(base)
		}
		p.Add(bars)
		p.Legend.Add(s.name, bars)

		var xys plotter.XYs
		var texts []string
		for i, v := range s.vals {
			xys = append(xys, plotter.XY{X: float64(i), Y: max(v, p.Y.Min)})
			texts = append(texts, label(v))
		}
		labels, err := plotter.NewLabels(plotter.XYLabels{XYs: xys, Labels: texts})
		if err != nil {
			return nil, err
		}
		for i := range labels.TextStyle {
			labels.TextStyle[i].Font.Size = vg.Points(8)
			labels.TextStyle[i].XAlign, labels.TextStyle[i].YAlign = draw.XCenter, draw.YBottom
		}
		labels.Offset = vg.Point{X: offset, Y: vg.Points(2)}
		p.Add(labels)
	}
	p.Add(plotter.NewGrid())
	p.Legend.Top = true
	p.Legend.XOffs = -vg.Points(12)
	p.NominalX(names...)
	p.X.Min, p.X.Max = -0.5, float64(len(names))-0.5
	return p, nil
}

// logTicks labels the powers of ten: 100, 1k, 10k, 100k, 1M.
type logTicks struct{}

func (logTicks) Ticks(lo, hi float64) []plot.Tick {
	var ticks []plot.Tick
	for _, t := range (plot.LogTicks{}).Ticks(lo, hi) {
		if t.Label != "" {
			t.Label = countLabel(t.Value)
		}
		ticks = append(ticks, t)
	}
	return ticks
}

// countLabel writes a count briefly: 950, 32.3k, 1.51M.
func countLabel(v float64) string {
	switch {
	case v >= 1e6:
		return trimZero(fmt.Sprintf("%.2f", v/1e6)) + "M"
	case v >= 1e3:
		return trimZero(fmt.Sprintf("%.1f", v/1e3)) + "k"
	}
	return fmt.Sprintf("%.0f", v)
}

func trimZero(s string) string {
	for len(s) > 1 && s[len(s)-1] == '0' {
		s = s[:len(s)-1]
	}
	if s[len(s)-1] == '.' {
		s = s[:len(s)-1]
	}
	return s
}
