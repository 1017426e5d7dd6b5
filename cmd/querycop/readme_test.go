package main

import (
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unicode"

	"github.com/querycop/querycop/token"
)

// These tests keep the README, the cookbooks and the Kubernetes material
// from rotting as the code moves: every variable they name is one the code
// reads, every relative link leads somewhere, every `querycop <command>` is
// one main.go knows, and every Querycop error text they quote starts with
// one of the documented prefixes.

const rdRoot = "../.."

// rdCookbooks are the cookbook pages the README and the docs promise.
var rdCookbooks = []string{
	"docs/cookbook/azure-flexible-server.md",
	"docs/cookbook/aws-rds-iam.md",
	"docs/cookbook/google-cloud-sql-iam.md",
	"docs/cookbook/alloydb-iam.md",
	"docs/cookbook/self-hosted.md",
}

// rdDocumentedErrorPrefixes are the texts operators grep for
// (backend/errors.go, token/command.go).
var rdDocumentedErrorPrefixes = []string{
	"backend dial failed: ",
	"backend TLS negotiation failed: ",
	"backend token command failed: ",
	"backend token provider failed: ",
}

// rdRead returns the file at path (relative to the repository root).
func rdRead(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(rdRoot, path))
	if err != nil {
		t.Fatalf("reading %s: %v", path, err)
	}
	return string(data)
}

// rdGlob returns the repository-relative paths matching pattern, failing
// when there are none: an empty glob would make a check pass vacuously.
func rdGlob(t *testing.T, pattern string) []string {
	t.Helper()
	matches, err := filepath.Glob(filepath.Join(rdRoot, pattern))
	if err != nil {
		t.Fatal(err)
	}
	if len(matches) == 0 {
		t.Fatalf("no file matches %s", pattern)
	}
	out := make([]string, 0, len(matches))
	for _, m := range matches {
		rel, err := filepath.Rel(rdRoot, m)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, filepath.ToSlash(rel))
	}
	return out
}

// rdUserDocs is what users read first: README, cookbooks, Kubernetes page
// and manifests.
func rdUserDocs(t *testing.T) []string {
	files := []string{"README.md", "docs/kubernetes.md"}
	files = append(files, rdGlob(t, "docs/cookbook/*.md")...)
	files = append(files, rdGlob(t, "deploy/kubernetes/*.yaml")...)
	return files
}

// rdAllMarkdown is README.md and every .md file under docs/.
func rdAllMarkdown(t *testing.T) []string {
	t.Helper()
	files := []string{"README.md"}
	err := filepath.WalkDir(filepath.Join(rdRoot, "docs"), func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && strings.HasSuffix(path, ".md") {
			rel, err := filepath.Rel(rdRoot, path)
			if err != nil {
				return err
			}
			files = append(files, filepath.ToSlash(rel))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// rdLine is one line of a markdown file and whether it is inside a fenced
// code block.
type rdLine struct {
	n      int
	text   string
	fenced bool
}

func rdLines(doc string) []rdLine {
	var out []rdLine
	fenced := false
	for i, line := range strings.Split(doc, "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "```") || strings.HasPrefix(trimmed, "~~~") {
			fenced = !fenced
			out = append(out, rdLine{i + 1, line, true})
			continue
		}
		out = append(out, rdLine{i + 1, line, fenced})
	}
	return out
}

var rdCodeSpan = regexp.MustCompile("`([^`]+)`")

// rdCode returns the code in a markdown file: each line of a fenced block,
// and each inline code span elsewhere, with its line number.
func rdCode(doc string) []rdLine {
	var out []rdLine
	for _, l := range rdLines(doc) {
		if l.fenced {
			out = append(out, l)
			continue
		}
		for _, m := range rdCodeSpan.FindAllStringSubmatch(l.text, -1) {
			out = append(out, rdLine{l.n, m[1], false})
		}
	}
	return out
}

func TestReadmeAndCookbooksExist(t *testing.T) {
	for _, f := range append([]string{"README.md", "docs/kubernetes.md",
		"deploy/kubernetes/deployment.yaml", "deploy/kubernetes/service.yaml", "deploy/kubernetes/sidecar.yaml"},
		rdCookbooks...) {
		if _, err := os.Stat(filepath.Join(rdRoot, f)); err != nil {
			t.Errorf("%s is missing: %v", f, err)
		}
	}
	readme := rdRead(t, "README.md")
	for _, f := range rdCookbooks {
		if !strings.Contains(readme, "("+f+")") {
			t.Errorf("README.md does not link %s", f)
		}
	}
	// The two quick-start commands come first.
	demo, test := strings.Index(readme, "scripts/demo"), strings.Index(readme, "scripts/test")
	features := strings.Index(readme, "## Features")
	if demo < 0 || test < 0 || features < 0 || demo > features || test > features {
		t.Error("README.md must open with scripts/demo and scripts/test, before the feature list")
	}
}

// TestDocVariablesAreRead: every GATEKEEPER_ variable the user-facing docs
// and manifests name is one the code reads; QUERYCOP_BACKEND_* names are the
// token command's environment and must be those the token package sets.
func TestDocVariablesAreRead(t *testing.T) {
	known := map[string]bool{}
	for _, v := range envVars() {
		known[v.Name] = true
	}
	commandEnv := map[string]bool{token.EnvHost: true, token.EnvPort: true, token.EnvUser: true, token.EnvDatabase: true}
	gatekeeper := regexp.MustCompile(`\bGATEKEEPER_[A-Z0-9_]+`)
	querycopEnv := regexp.MustCompile(`\bQUERYCOP_[A-Z0-9_]+`)
	for _, f := range rdUserDocs(t) {
		doc := rdRead(t, f)
		for _, name := range gatekeeper.FindAllString(doc, -1) {
			switch {
			case strings.HasSuffix(name, "_"):
				t.Errorf("%s names a variable family (%s…); write the variables out in full", f, name)
			case !known[name]:
				t.Errorf("%s names %s, which the code does not read", f, name)
			}
		}
		for _, name := range querycopEnv.FindAllString(doc, -1) {
			if !commandEnv[name] {
				t.Errorf("%s names %s; the token command only receives %s, %s, %s and %s",
					f, name, token.EnvHost, token.EnvPort, token.EnvUser, token.EnvDatabase)
			}
		}
	}
}

var rdLink = regexp.MustCompile(`!?\[[^\]]*\]\(([^)\s]+)(?:\s+"[^"]*")?\)`)

// TestDocLinksResolve: every relative link in README.md and docs/**/*.md
// leads to an existing file, and a #fragment into a markdown file to one of
// its headings.
func TestDocLinksResolve(t *testing.T) {
	anchors := map[string]map[string]bool{}
	anchorsOf := func(path string) map[string]bool {
		if a, ok := anchors[path]; ok {
			return a
		}
		a := rdAnchors(rdRead(t, path))
		anchors[path] = a
		return a
	}
	for _, f := range rdAllMarkdown(t) {
		for _, l := range rdLines(rdRead(t, f)) {
			if l.fenced {
				continue
			}
			for _, m := range rdLink.FindAllStringSubmatch(l.text, -1) {
				target := m[1]
				if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
					continue
				}
				file, fragment, _ := strings.Cut(target, "#")
				resolved := f
				if file != "" {
					resolved = filepath.ToSlash(filepath.Clean(filepath.Join(filepath.Dir(f), file)))
					if strings.HasPrefix(resolved, "../") {
						t.Errorf("%s:%d: link %s leaves the repository", f, l.n, target)
						continue
					}
					if _, err := os.Stat(filepath.Join(rdRoot, resolved)); err != nil {
						t.Errorf("%s:%d: link %s: %s does not exist", f, l.n, target, resolved)
						continue
					}
				}
				if fragment != "" && strings.HasSuffix(resolved, ".md") && !anchorsOf(resolved)[fragment] {
					t.Errorf("%s:%d: link %s: %s has no heading with the anchor #%s", f, l.n, target, resolved, fragment)
				}
			}
		}
	}
}

// rdAnchors returns the GitHub-style anchors of a markdown file's headings.
func rdAnchors(doc string) map[string]bool {
	out := map[string]bool{}
	seen := map[string]int{}
	heading := regexp.MustCompile(`^#{1,6}\s+(.*?)\s*#*\s*$`)
	for _, l := range rdLines(doc) {
		if l.fenced {
			continue
		}
		m := heading.FindStringSubmatch(l.text)
		if m == nil {
			continue
		}
		slug := rdSlug(m[1])
		if n := seen[slug]; n > 0 {
			out[slug+"-"+strconv.Itoa(n)] = true
		} else {
			out[slug] = true
		}
		seen[slug]++
	}
	return out
}

// rdSlug is GitHub's heading anchor: link syntax reduced to its text,
// lower case, punctuation dropped, spaces turned into hyphens.
func rdSlug(heading string) string {
	heading = regexp.MustCompile(`\[([^\]]*)\]\([^)]*\)`).ReplaceAllString(heading, "$1")
	var b strings.Builder
	for _, r := range strings.ToLower(heading) {
		switch {
		case unicode.IsLetter(r), unicode.IsDigit(r), r == '_', r == '-':
			b.WriteRune(r)
		case r == ' ':
			b.WriteRune('-')
		}
	}
	return b.String()
}

func TestDocSlug(t *testing.T) {
	for in, want := range map[string]string{
		"1.5 Backend TLS":                        "15-backend-tls",
		"1.6 `GATEKEEPER_BACKEND_TOKEN_CMD`":     "16-gatekeeper_backend_token_cmd",
		"2. Listening and client TLS":            "2-listening-and-client-tls",
		"Getting `az` next to Querycop":          "getting-az-next-to-querycop",
		"Networking: public or private access":   "networking-public-or-private-access",
		"Managed identities, service principals": "managed-identities-service-principals",
	} {
		if got := rdSlug(in); got != want {
			t.Errorf("rdSlug(%q) = %q, want %q", in, got, want)
		}
	}
}

// rdSubcommands returns the sub-commands main.go dispatches on, read from
// its source so a new or renamed one is seen here at once.
func rdSubcommands(t *testing.T) map[string]bool {
	src := rdRead(t, "cmd/querycop/main.go")
	out := map[string]bool{}
	literal := regexp.MustCompile(`"([a-z][a-z0-9-]*)"`)
	for _, m := range regexp.MustCompile(`(?m)^\s*case ((?:"[^"]*",?\s*)+):`).FindAllStringSubmatch(src, -1) {
		for _, l := range literal.FindAllStringSubmatch(m[1], -1) {
			out[l[1]] = true
		}
	}
	for _, m := range regexp.MustCompile(`args\[0\] == "([a-z][a-z0-9-]*)"`).FindAllStringSubmatch(src, -1) {
		out[m[1]] = true
	}
	for _, want := range []string{"help", "check", "healthcheck", "version"} {
		if !out[want] {
			t.Fatalf("could not find the sub-command %q in main.go (found %v); update this test", want, out)
		}
	}
	return out
}

// rdCheckFlags returns the flags `querycop check` defines in check.go.
func rdCheckFlags(t *testing.T) map[string]bool {
	src := rdRead(t, "cmd/querycop/check.go")
	out := map[string]bool{"-h": true, "-help": true, "--help": true}
	for _, m := range regexp.MustCompile(`fs\.(?:String|Bool|Int|Duration)\("([a-z-]+)"`).FindAllStringSubmatch(src, -1) {
		out["-"+m[1]] = true
		out["--"+m[1]] = true
	}
	if !out["-user"] || !out["-database"] {
		t.Fatalf("could not find check's -user and -database flags in check.go (found %v)", out)
	}
	return out
}

// TestDocSubcommandsExist: every `querycop <command>` in the README, the
// cookbooks and the Kubernetes page is one main.go runs, and the flags given
// to `querycop check` are ones it defines.
func TestDocSubcommandsExist(t *testing.T) {
	commands := rdSubcommands(t)
	flags := rdCheckFlags(t)
	invocation := regexp.MustCompile(`(?:^|[\s;&|("'/=])querycop[ \t]+([a-z][a-z0-9-]*)\b([^\n#]*)`)
	files := append([]string{"README.md", "docs/kubernetes.md"}, rdGlob(t, "docs/cookbook/*.md")...)
	found := 0
	for _, f := range files {
		for _, c := range rdCode(rdRead(t, f)) {
			for _, m := range invocation.FindAllStringSubmatch(c.text, -1) {
				found++
				cmd, rest := m[1], m[2]
				if !commands[cmd] {
					t.Errorf("%s:%d: `querycop %s` is not a command main.go knows (%v); text that is not a command, such as a message, belongs in quotes rather than code",
						f, c.n, cmd, slices.Sorted(maps.Keys(commands)))
					continue
				}
				if cmd != "check" {
					continue
				}
				for _, word := range strings.Fields(rest) {
					word = strings.Trim(word, "[]`")
					if strings.HasPrefix(word, "-") && !flags[word] {
						t.Errorf("%s:%d: `querycop check` has no flag %s", f, c.n, word)
					}
				}
			}
		}
	}
	if found == 0 {
		t.Error("no `querycop <command>` found in the docs; the pattern is broken")
	}
}

// TestDocErrorTextsUseDocumentedPrefixes: every Querycop error the
// cookbooks quote (a code span starting with "backend ") begins with one of
// the documented prefixes, each cookbook has a troubleshooting section that
// quotes at least one, and the texts the code fixes are quoted exactly.
func TestDocErrorTextsUseDocumentedPrefixes(t *testing.T) {
	timeout := ""
	for _, v := range envVars() {
		if v.Name == "GATEKEEPER_BACKEND_TOKEN_TIMEOUT" {
			timeout = v.Default
		}
	}
	if timeout == "" {
		t.Fatal("GATEKEEPER_BACKEND_TOKEN_TIMEOUT has no default")
	}
	backendErrors := rdRead(t, "backend/errors.go")
	tokenCommand := rdRead(t, "token/command.go")

	for _, f := range rdCookbooks {
		doc := rdRead(t, f)
		start := strings.Index(doc, "\n## Troubleshooting\n")
		if start < 0 {
			t.Errorf("%s has no \"## Troubleshooting\" section", f)
			continue
		}
		section := doc[start+1:]
		if end := strings.Index(section[3:], "\n## "); end >= 0 {
			section = section[:end+3]
		}
		inSection := 0
		for _, c := range rdCode(section) {
			if strings.HasPrefix(c.text, "backend ") && rdHasDocumentedPrefix(c.text) {
				inSection++
			}
		}
		if inSection == 0 {
			t.Errorf("%s: the troubleshooting section quotes no error text with a documented prefix", f)
		}

		for _, c := range rdCode(doc) {
			text := strings.TrimSpace(c.text)
			if !strings.HasPrefix(text, "backend ") {
				continue
			}
			if !rdHasDocumentedPrefix(text) {
				t.Errorf("%s:%d: %q does not start with a documented prefix (%q)", f, c.n, text, rdDocumentedErrorPrefixes)
				continue
			}
			if reason, ok := strings.CutPrefix(text, "backend token command failed: timed out after "); ok && reason != timeout {
				t.Errorf("%s:%d: %q: the default GATEKEEPER_BACKEND_TOKEN_TIMEOUT is %s", f, c.n, text, timeout)
			}
			if strings.Contains(text, "server does not support TLS") && !strings.Contains(backendErrors, strings.TrimPrefix(text, "backend TLS negotiation failed: ")) {
				t.Errorf("%s:%d: %q is not the text in backend/errors.go", f, c.n, text)
			}
			if strings.Contains(text, "executable file not found") && !strings.HasSuffix(text, " (executable file not found in $PATH)") {
				t.Errorf("%s:%d: %q: token/command.go appends \" (executable file not found in $PATH)\"", f, c.n, text)
			}
		}
	}
	if !strings.Contains(tokenCommand, `" (executable file not found in $PATH)"`) {
		t.Error("token/command.go no longer appends \" (executable file not found in $PATH)\"; update the cookbooks")
	}
	for _, p := range rdDocumentedErrorPrefixes {
		if !strings.Contains(backendErrors+tokenCommand, strings.TrimSuffix(p, " ")) {
			t.Errorf("the documented prefix %q is no longer in backend/errors.go or token/command.go", p)
		}
	}
}

func rdHasDocumentedPrefix(text string) bool {
	for _, p := range rdDocumentedErrorPrefixes {
		if strings.HasPrefix(text, p) {
			return true
		}
	}
	return false
}
