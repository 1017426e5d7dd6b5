// Command benchreport turns the raw results that scripts/bench collects into
// Markdown tables: median TPS and latency per workload and target, the
// Querycop/PgBouncer and Querycop/direct ratios (also for the pair that
// talks TLS to the server), pooler CPU per 10,000 transactions, memory per
// idle client and, when Querycop ran with fixed GOMAXPROCS values, a scaling
// table with the pooler's CPU use in percent of one core.
//
//	benchreport -results results.tsv -idle idle.tsv -clk-tck 100
//
// results.tsv, one line per pgbench run, tab-separated:
//
//	rep workload target tps latency_ms transactions cpu_ticks status load [elapsed_s]
//
// (cpu_ticks "-" when not measured, status "ok" or a failure description,
// elapsed_s the wall time of the pgbench run, needed only for CPU percent).
// idle.tsv, one line per pooler:
//
//	target clients opened errors rss_before_kib rss_during_kib
package main

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
)

// Targets in column order, with display names.
var targetOrder = []struct{ id, name string }{
	{"direct", "direct"},
	{"pgb-session", "PgBouncer session"},
	{"qc-session", "Querycop session"},
	{"pgb-tx", "PgBouncer tx"},
	{"qc-tx", "Querycop tx"},
	{"pgb-session-tls", "PgBouncer session TLS"},
	{"qc-session-tls", "Querycop session TLS"},
	{"pgb-tx-tls", "PgBouncer tx TLS"},
	{"qc-tx-tls", "Querycop tx TLS"},
	{"floor-pair", "Go floor goroutines"},
	{"floor-loop", "Go floor epoll"},
}

// Ratio columns, the first target over the second, each shown when both
// ran. The pairs without direct are also the CPU table's ratios.
var ratioCols = []struct{ num, den, name string }{
	{"qc-session", "pgb-session", "QC/PgB session"},
	{"qc-session", "direct", "QC session/direct"},
	{"qc-tx", "pgb-tx", "QC/PgB tx"},
	{"qc-session-tls", "pgb-session-tls", "QC/PgB session TLS"},
	{"qc-tx-tls", "pgb-tx-tls", "QC/PgB tx TLS"},
	{"qc-session", "floor-pair", "QC session/floor goroutines"},
	{"floor-pair", "pgb-session", "floor goroutines/PgB session"},
	{"floor-loop", "pgb-session", "floor epoll/PgB session"},
}

// procsTarget reports N for "qc-session-pN": a Querycop in session mode run
// with GOMAXPROCS=N (the scaling targets).
func procsTarget(id string) (int, bool) {
	n, err := strconv.Atoi(strings.TrimPrefix(id, "qc-session-p"))
	return n, err == nil && n > 0 && strings.HasPrefix(id, "qc-session-p")
}

func targetName(id string) string {
	for _, t := range targetOrder {
		if t.id == id {
			return t.name
		}
	}
	if n, ok := procsTarget(id); ok {
		return fmt.Sprintf("Querycop session GOMAXPROCS=%d", n)
	}
	return id
}

type run struct {
	rep            string
	tps, lat       float64
	tx             float64
	cpuTicks       float64
	hasCPU, parsed bool
	elapsed        float64 // wall seconds of the run; 0 when not recorded
	status         string
}

type key struct{ workload, target string }

func main() {
	resultsPath := flag.String("results", "", "results.tsv")
	idlePath := flag.String("idle", "", "idle.tsv (optional)")
	clkTck := flag.Float64("clk-tck", 100, "clock ticks per second (getconf CLK_TCK)")
	flag.Parse()

	runs := map[key][]run{}
	var workloads []string
	present := map[string]bool{}
	for _, f := range readTSV(*resultsPath) {
		if len(f) < 8 {
			continue
		}
		k := key{f[1], f[2]}
		if !slices.Contains(workloads, k.workload) {
			workloads = append(workloads, k.workload)
		}
		present[k.target] = true
		r := run{rep: f[0], status: f[7]}
		var err1, err2 error
		r.tps, err1 = strconv.ParseFloat(f[3], 64)
		r.lat, err2 = strconv.ParseFloat(f[4], 64)
		r.parsed = err1 == nil && err2 == nil
		r.tx, _ = strconv.ParseFloat(f[5], 64)
		if t, err := strconv.ParseFloat(f[6], 64); err == nil {
			r.cpuTicks, r.hasCPU = t, true
		}
		if len(f) >= 10 {
			r.elapsed, _ = strconv.ParseFloat(f[9], 64)
		}
		runs[k] = append(runs[k], r)
	}
	var targets, procsTargets []string
	for _, t := range targetOrder {
		if present[t.id] {
			targets = append(targets, t.id)
		}
	}
	for t := range present {
		if _, ok := procsTarget(t); ok {
			procsTargets = append(procsTargets, t)
		}
	}
	slices.SortFunc(procsTargets, func(a, b string) int {
		na, _ := procsTarget(a)
		nb, _ := procsTarget(b)
		return na - nb
	})
	targets = append(targets, procsTargets...)

	median := func(k key, val func(run) (float64, bool)) (float64, bool) {
		var xs []float64
		for _, r := range runs[k] {
			if v, ok := val(r); ok {
				xs = append(xs, v)
			}
		}
		if len(xs) == 0 {
			return 0, false
		}
		slices.Sort(xs)
		m := len(xs) / 2
		if len(xs)%2 == 1 {
			return xs[m], true
		}
		return (xs[m-1] + xs[m]) / 2, true
	}
	tpsOf := func(r run) (float64, bool) { return r.tps, r.parsed }
	latOf := func(r run) (float64, bool) { return r.lat, r.parsed }
	cpuOf := func(r run) (float64, bool) {
		if !r.parsed || !r.hasCPU || r.tx <= 0 {
			return 0, false
		}
		return r.cpuTicks / *clkTck / r.tx * 10000, true
	}
	failedMark := func(k key) string {
		for _, r := range runs[k] {
			if r.status != "ok" {
				return "*"
			}
		}
		return ""
	}
	cell := func(k key, val func(run) (float64, bool), format string) string {
		v, ok := median(k, val)
		if !ok {
			if len(runs[k]) == 0 {
				return "n/a"
			}
			return "failed"
		}
		return fmt.Sprintf(format, v) + failedMark(k)
	}
	ratio := func(w, num, den string, val func(run) (float64, bool)) string {
		a, ok1 := median(key{w, num}, val)
		b, ok2 := median(key{w, den}, val)
		if !ok1 || !ok2 || b == 0 {
			return "n/a"
		}
		return fmt.Sprintf("%.2f", a/b)
	}
	has := func(t string) bool { return present[t] }

	// TPS.
	fmt.Println("### Throughput (median TPS over repetitions)")
	fmt.Println()
	hdr := []string{"workload"}
	for _, t := range targets {
		hdr = append(hdr, targetName(t))
	}
	for _, c := range ratioCols {
		if has(c.num) && has(c.den) {
			hdr = append(hdr, c.name)
		}
	}
	hdr = append(hdr, "spread")
	printRow(hdr)
	printSep(len(hdr))
	for _, w := range workloads {
		row := []string{w}
		spread := 0.0
		for _, t := range targets {
			k := key{w, t}
			row = append(row, cell(k, tpsOf, "%.0f"))
			if m, ok := median(k, tpsOf); ok && m > 0 {
				lo, hi := m, m
				for _, r := range runs[k] {
					if r.parsed {
						lo, hi = min(lo, r.tps), max(hi, r.tps)
					}
				}
				spread = max(spread, (hi-lo)/m)
			}
		}
		for _, c := range ratioCols {
			if has(c.num) && has(c.den) {
				row = append(row, ratio(w, c.num, c.den, tpsOf))
			}
		}
		row = append(row, fmt.Sprintf("%.0f%%", spread*100))
		printRow(row)
	}
	fmt.Println()
	fmt.Println("Ratios are of medians. spread = largest (max-min)/median of TPS over the repetitions of any target in the row.")
	fmt.Println()

	// Latency.
	fmt.Println("### Average latency (ms, median over repetitions)")
	fmt.Println()
	hdr = []string{"workload"}
	for _, t := range targets {
		hdr = append(hdr, targetName(t))
	}
	printRow(hdr)
	printSep(len(hdr))
	for _, w := range workloads {
		row := []string{w}
		for _, t := range targets {
			row = append(row, cell(key{w, t}, latOf, "%.3f"))
		}
		printRow(row)
	}
	fmt.Println()

	// CPU.
	var poolers []string
	for _, t := range targets {
		if t != "direct" {
			poolers = append(poolers, t)
		}
	}
	if len(poolers) > 0 {
		fmt.Println("### Pooler CPU (CPU seconds, user+system, per 10,000 transactions; median)")
		fmt.Println()
		hdr = []string{"workload"}
		for _, t := range poolers {
			hdr = append(hdr, targetName(t))
		}
		for _, c := range ratioCols {
			if c.den != "direct" && has(c.num) && has(c.den) {
				hdr = append(hdr, c.name)
			}
		}
		printRow(hdr)
		printSep(len(hdr))
		for _, w := range workloads {
			row := []string{w}
			for _, t := range poolers {
				row = append(row, cell(key{w, t}, cpuOf, "%.3f"))
			}
			for _, c := range ratioCols {
				if c.den != "direct" && has(c.num) && has(c.den) {
					row = append(row, ratio(w, c.num, c.den, cpuOf))
				}
			}
			printRow(row)
		}
		fmt.Println()
	}

	// Scaling: one row per pooler for each workload that ran on a Querycop
	// with a fixed GOMAXPROCS, so TPS and CPU use sit side by side.
	if len(procsTargets) > 0 {
		pctOf := func(r run) (float64, bool) {
			if !r.parsed || !r.hasCPU || r.elapsed <= 0 {
				return 0, false
			}
			return r.cpuTicks / *clkTck / r.elapsed * 100, true
		}
		fmt.Println("### Scaling (Querycop with fixed GOMAXPROCS against PgBouncer's single process)")
		fmt.Println()
		hdr = []string{"workload", "pooler", "TPS", "× PgBouncer session TPS", "pooler CPU % of one core", "CPU s per 10k tx", "× PgBouncer session CPU per tx"}
		printRow(hdr)
		fmt.Println("|---|---|" + strings.Repeat("---:|", len(hdr)-2))
		for _, w := range workloads {
			ran := false
			for _, t := range procsTargets {
				ran = ran || len(runs[key{w, t}]) > 0
			}
			if !ran {
				continue
			}
			for _, t := range poolers {
				k := key{w, t}
				if len(runs[k]) == 0 {
					continue
				}
				printRow([]string{w, targetName(t), cell(k, tpsOf, "%.0f"), ratio(w, t, "pgb-session", tpsOf),
					cell(k, pctOf, "%.0f"), cell(k, cpuOf, "%.3f"), ratio(w, t, "pgb-session", cpuOf)})
			}
		}
		fmt.Println()
		fmt.Println("CPU % = pooler CPU seconds (user+system, all threads) / wall seconds of the pgbench run × 100, median; 100 is one core busy.")
		fmt.Println()
	}

	// Memory.
	if *idlePath != "" {
		rows := readTSV(*idlePath)
		if len(rows) > 0 {
			fmt.Println("### Memory per idle client (VmRSS)")
			fmt.Println()
			hdr = []string{"pooler", "clients asked", "opened", "errors", "RSS before (MiB)", "RSS with clients (MiB)", "KiB per idle client"}
			printRow(hdr)
			printSep(len(hdr))
			for _, f := range rows {
				if len(f) < 6 {
					continue
				}
				before, _ := strconv.ParseFloat(f[4], 64)
				during, _ := strconv.ParseFloat(f[5], 64)
				opened, _ := strconv.ParseFloat(f[2], 64)
				per := "n/a"
				if opened > 0 && during > 0 {
					per = fmt.Sprintf("%.1f", (during-before)/opened)
				}
				printRow([]string{targetName(f[0]), f[1], f[2], f[3],
					fmt.Sprintf("%.1f", before/1024), fmt.Sprintf("%.1f", during/1024), per})
			}
			fmt.Println()
			fmt.Println("KiB per idle client = (RSS with clients - RSS before) / clients opened.")
			fmt.Println()
		}
	}

	// Failures.
	var fails []string
	for _, w := range workloads {
		for _, t := range targets {
			for _, r := range runs[key{w, t}] {
				if r.status != "ok" {
					fails = append(fails, fmt.Sprintf("- %s, %s, repetition %s: %s", w, targetName(t), r.rep, r.status))
				}
			}
		}
	}
	fmt.Println("### Failures")
	fmt.Println()
	if len(fails) == 0 {
		fmt.Println("None: every run exited 0 and reported 0 failed transactions.")
	} else {
		fmt.Println("Cells marked * include a run that failed (medians use the runs that reported numbers):")
		fmt.Println()
		for _, f := range fails {
			fmt.Println(f)
		}
	}
}

func readTSV(path string) [][]string {
	if path == "" {
		return nil
	}
	f, err := os.Open(path)
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchreport:", err)
		return nil
	}
	defer f.Close()
	var rows [][]string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if line := sc.Text(); line != "" {
			rows = append(rows, strings.Split(line, "\t"))
		}
	}
	return rows
}

func printRow(cells []string) { fmt.Println("| " + strings.Join(cells, " | ") + " |") }

func printSep(n int) {
	parts := make([]string, n)
	parts[0] = "---"
	for i := 1; i < n; i++ {
		parts[i] = "---:"
	}
	fmt.Println("|" + strings.Join(parts, "|") + "|")
}
