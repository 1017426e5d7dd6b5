package admin_test

import (
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
)

const operationsDoc = "../docs/operations.md"

// TestOperationsDocListsEveryMetric keeps the metric table of the
// operations guide and the collector in step, both ways.
func TestOperationsDocListsEveryMetric(t *testing.T) {
	src, err := os.ReadFile("metrics.go")
	if err != nil {
		t.Fatal(err)
	}
	doc, err := os.ReadFile(operationsDoc)
	if err != nil {
		t.Fatal(err)
	}
	var inCode []string
	for _, m := range regexp.MustCompile(`\bd\("([a-z_]+)",`).FindAllStringSubmatch(string(src), -1) {
		inCode = append(inCode, "querycop_"+m[1])
	}
	if len(inCode) < 10 {
		t.Fatalf("found only %d metrics in metrics.go: %v; the pattern no longer matches the code", len(inCode), inCode)
	}
	var inDoc []string
	for _, line := range strings.Split(string(doc), "\n") {
		if m := regexp.MustCompile("^\\| `(querycop_[a-z_]+)` \\|").FindStringSubmatch(line); m != nil {
			inDoc = append(inDoc, m[1])
		}
	}
	for _, name := range inCode {
		if !slices.Contains(inDoc, name) {
			t.Errorf("%s is served but not in the metric table of %s", name, operationsDoc)
		}
	}
	for _, name := range inDoc {
		if !slices.Contains(inCode, name) {
			t.Errorf("%s lists %s, which the code does not serve", operationsDoc, name)
		}
	}
}

// TestOperationsDocListsEveryRoute keeps the endpoint table and the routes
// the tests exercise (every route the server registers) in step.
func TestOperationsDocListsEveryRoute(t *testing.T) {
	doc, err := os.ReadFile(operationsDoc)
	if err != nil {
		t.Fatal(err)
	}
	src, err := os.ReadFile("server.go")
	if err != nil {
		t.Fatal(err)
	}
	routes := regexp.MustCompile(`mux\.Handle(?:Func)?\("([A-Z]+) (/[a-z0-9/]+)"`).FindAllStringSubmatch(string(src), -1)
	if len(routes) < 10 {
		t.Fatalf("found only %d routes in server.go; the pattern no longer matches the code", len(routes))
	}
	seen := map[string]bool{}
	for _, r := range routes {
		route := r[1] + " " + r[2]
		if seen[route] {
			continue
		}
		seen[route] = true
		if !strings.Contains(string(doc), "| `"+route+"` |") {
			t.Errorf("route %s is not in the endpoint table of %s", route, operationsDoc)
		}
		if !slices.ContainsFunc(endpoints, func(ep endpoint) bool {
			path, _, _ := strings.Cut(ep.path, "?")
			return ep.method+" "+path == route
		}) {
			t.Errorf("route %s is missing from the auth matrix in server_test.go", route)
		}
	}
}
