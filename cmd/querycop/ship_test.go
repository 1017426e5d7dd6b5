package main

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// No Docker engine runs where CI does, so the image must build with the
// same script CI runs; this keeps the Dockerfile calling it.
func TestDockerfileBuildsWithCIScript(t *testing.T) {
	data, err := os.ReadFile("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	df := string(data)
	if !regexp.MustCompile(`(?m)^RUN .*scripts/build\b`).MatchString(df) {
		t.Error("the Dockerfile does not build with scripts/build")
	}
	ci, err := os.ReadFile("../../.ci/run")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(ci), "scripts/build") {
		t.Error(".ci/run does not run scripts/build")
	}
	if !strings.Contains(string(ci), "scripts/image-build-stage") {
		t.Error(".ci/run does not run scripts/image-build-stage (the Dockerfile's build stage without Docker)")
	}
	for _, want := range []string{
		"FROM debian:trixie-slim", "ca-certificates", "USER querycop",
		"GATEKEEPER_LISTEN_ADDR=0.0.0.0", "GATEKEEPER_API_ADDR=0.0.0.0",
		"EXPOSE 15432 8080", "HEALTHCHECK", `"healthcheck"`, "WITH_AZURE_CLI", "azure-cli",
		"CGO_ENABLED=0", // via scripts/build
	} {
		if want == "CGO_ENABLED=0" {
			script, _ := os.ReadFile("../../scripts/build")
			if !strings.Contains(string(script), want) || !strings.Contains(string(script), "-trimpath") {
				t.Errorf("scripts/build lacks %s or -trimpath", want)
			}
			continue
		}
		if !strings.Contains(df, want) {
			t.Errorf("the Dockerfile lacks %q", want)
		}
	}
}

// No hadolint binary is available where CI runs (it is a Haskell program,
// in neither Debian nor the Go module proxy), so the rules that apply to
// this Dockerfile are checked here by hand, by their hadolint codes.
func TestDockerfileFollowsHadolintRules(t *testing.T) {
	data, err := os.ReadFile("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	// Join continuation lines; keep "# hadolint ignore=" comments, which
	// apply to the next instruction.
	var instrs []string
	ignores := map[int]string{}
	var cur strings.Builder
	for _, line := range strings.Split(string(data), "\n") {
		trimmed := strings.TrimSpace(line)
		if cur.Len() == 0 && strings.HasPrefix(trimmed, "#") {
			if rules, ok := strings.CutPrefix(trimmed, "# hadolint ignore="); ok {
				ignores[len(instrs)] += rules + ","
			}
			continue
		}
		if cur.Len() == 0 && trimmed == "" {
			continue
		}
		if s, ok := strings.CutSuffix(line, "\\"); ok {
			cur.WriteString(s + " ")
			continue
		}
		cur.WriteString(line)
		instrs = append(instrs, strings.Join(strings.Fields(cur.String()), " "))
		cur.Reset()
	}
	ignored := func(i int, code string) bool { return strings.Contains(ignores[i], code) }
	stages := map[string]bool{}
	lastUser, prev := "", ""
	for i, in := range instrs {
		kw, rest, _ := strings.Cut(in, " ")
		kw = strings.ToUpper(kw)
		fail := func(code, msg string) {
			if !ignored(i, code) {
				t.Errorf("%s %s: %q", code, msg, in)
			}
		}
		switch kw {
		case "FROM":
			f := strings.Fields(rest)
			if !strings.Contains(f[0], ":") && !strings.Contains(f[0], "@") {
				fail("DL3006", "always tag the image explicitly")
			}
			if strings.HasSuffix(f[0], ":latest") {
				fail("DL3007", "do not use :latest")
			}
			if len(f) == 3 && strings.EqualFold(f[1], "AS") {
				stages[f[2]] = true
			}
		case "WORKDIR":
			if !strings.HasPrefix(rest, "/") && !strings.HasPrefix(rest, "$") {
				fail("DL3000", "use an absolute WORKDIR")
			}
		case "ADD":
			fail("DL3020", "use COPY instead of ADD for files and folders")
		case "COPY":
			if from, ok := strings.CutPrefix(rest, "--from="); ok {
				name, _, _ := strings.Cut(from, " ")
				if !stages[name] {
					fail("DL3022", "COPY --from should name an earlier stage")
				}
			}
		case "USER":
			lastUser = rest
		case "CMD", "ENTRYPOINT":
			if !strings.HasPrefix(rest, "[") {
				fail("DL3025", "use the JSON form")
			}
		case "RUN":
			if prev == "RUN" {
				fail("DL3059", "consolidate consecutive RUN instructions")
			}
			for _, word := range []struct{ re, code, msg string }{
				{`(^|[;&|]\s*)cd\s`, "DL3003", "use WORKDIR to switch directory"},
				{`\bsudo\b`, "DL3004", "do not use sudo"},
				{`(^|[;&|]\s*)apt\s`, "DL3027", "use apt-get, not apt"},
				{`apt-get\s+(dist-)?upgrade`, "DL3005", "do not upgrade the base image's packages"},
				{`[^|]\|[^|]`, "DL4006", "set SHELL -o pipefail before RUN with a pipe"},
			} {
				if regexp.MustCompile(word.re).MatchString(rest) {
					fail(word.code, word.msg)
				}
			}
			for _, cmd := range regexp.MustCompile(`apt-get install[^;&|]*`).FindAllString(rest, -1) {
				if !strings.Contains(cmd, " -y") {
					fail("DL3014", "use apt-get install -y")
				}
				if !strings.Contains(cmd, "--no-install-recommends") {
					fail("DL3015", "use --no-install-recommends")
				}
				for _, pkg := range strings.Fields(cmd)[2:] {
					if !strings.HasPrefix(pkg, "-") && !strings.Contains(pkg, "=") {
						fail("DL3008", "pin versions in apt-get install ("+pkg+")")
					}
				}
			}
			if strings.Contains(rest, "apt-get install") && !strings.Contains(rest, "rm -rf /var/lib/apt/lists/*") {
				fail("DL3009", "delete the apt-get lists after installing")
			}
		}
		prev = kw
	}
	if lastUser == "" || lastUser == "root" || lastUser == "0" {
		t.Errorf("DL3002: the last USER should not be root (got %q)", lastUser)
	}
	if len(instrs) < 10 {
		t.Fatalf("parsed only %d instructions: %q", len(instrs), instrs)
	}
}

// A fresh clone's first hour: scripts/test runs go test -race, which needs
// cgo, so scripts/install-deps installs a C compiler and the C library's
// headers; scripts/test and scripts/build find Go where its tarball puts
// it, as scripts/demo does.
func TestScriptsFindTheirTools(t *testing.T) {
	read := func(name string) string {
		b, err := os.ReadFile("../../scripts/" + name)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	deps := read("install-deps")
	for _, want := range []string{"missing+=(gcc)", "missing+=(libc6-dev)", "missing+=(curl)"} {
		if !strings.Contains(deps, want) {
			t.Errorf("scripts/install-deps lacks %q", want)
		}
	}
	for _, script := range []string{"test", "build", "demo"} {
		if !strings.Contains(read(script), "/usr/local/go/bin") {
			t.Errorf("scripts/%s does not look for Go in /usr/local/go/bin", script)
		}
	}
	if !strings.Contains(read("test"), "go test -race") {
		t.Error("scripts/test no longer runs go test -race; drop the C compiler from install-deps if that is meant")
	}
}
