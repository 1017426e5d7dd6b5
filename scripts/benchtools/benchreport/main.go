// Command benchreport turns the raw results that scripts/bench collects into
// Markdown tables: median TPS and latency per workload and target, the
// Querycop/PgBouncer and Querycop/direct ratios, pooler CPU per 10,000
// transactions, and memory per idle client.
//
//	benchreport -results results.tsv -idle idle.tsv -clk-tck 100
//
// results.tsv, one line per pgbench run, tab-separated:
//
//	rep workload target tps latency_ms transactions cpu_ticks status
//
// (cpu_ticks "-" when not measured, status "ok" or a failure description).
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
}

func targetName(id string) string {
	for _, t := range targetOrder {
		if t.id == id {
			return t.name
		}
	}
	return id
}

type run struct {
	rep            string
	tps, lat       float64
	tx             float64
	cpuTicks       float64
	hasCPU, parsed bool
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
		runs[k] = append(runs[k], r)
	}
	var targets []string
	for _, t := range targetOrder {
		if present[t.id] {
			targets = append(targets, t.id)
		}
	}

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
	if has("qc-session") && has("pgb-session") {
		hdr = append(hdr, "QC/PgB session")
	}
	if has("qc-session") && has("direct") {
		hdr = append(hdr, "QC session/direct")
	}
	if has("qc-tx") && has("pgb-tx") {
		hdr = append(hdr, "QC/PgB tx")
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
		if has("qc-session") && has("pgb-session") {
			row = append(row, ratio(w, "qc-session", "pgb-session", tpsOf))
		}
		if has("qc-session") && has("direct") {
			row = append(row, ratio(w, "qc-session", "direct", tpsOf))
		}
		if has("qc-tx") && has("pgb-tx") {
			row = append(row, ratio(w, "qc-tx", "pgb-tx", tpsOf))
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
		if has("qc-session") && has("pgb-session") {
			hdr = append(hdr, "QC/PgB session")
		}
		if has("qc-tx") && has("pgb-tx") {
			hdr = append(hdr, "QC/PgB tx")
		}
		printRow(hdr)
		printSep(len(hdr))
		for _, w := range workloads {
			row := []string{w}
			for _, t := range poolers {
				row = append(row, cell(key{w, t}, cpuOf, "%.3f"))
			}
			if has("qc-session") && has("pgb-session") {
				row = append(row, ratio(w, "qc-session", "pgb-session", cpuOf))
			}
			if has("qc-tx") && has("pgb-tx") {
				row = append(row, ratio(w, "qc-tx", "pgb-tx", cpuOf))
			}
			printRow(row)
		}
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
