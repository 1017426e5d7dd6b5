package main

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

const configDoc = "../../docs/configuration.md"

// TestConfigurationDocMatchesCode keeps docs/configuration.md in step with
// the struct tags that --help is generated from: every variable is
// documented with its default, and the page names no GATEKEEPER_ variable
// that Querycop does not read.
func TestConfigurationDocMatchesCode(t *testing.T) {
	data, err := os.ReadFile(configDoc)
	if err != nil {
		t.Fatal(err)
	}
	doc := string(data)
	vars := envVars()

	known := map[string]bool{}
	for _, v := range vars {
		known[v.Name] = true
		if !strings.Contains(doc, v.Name) {
			t.Errorf("%s is read by the code but missing from %s", v.Name, configDoc)
			continue
		}
		row := tableRow(doc, v.Name)
		if row == "" {
			t.Errorf("%s has no table row (| `%s` | default | ... |) in %s", v.Name, v.Name, configDoc)
			continue
		}
		if v.Default != "" && !strings.Contains(row, "`"+v.Default+"`") {
			t.Errorf("%s: the code's default is %q, but its row says:\n%s", v.Name, v.Default, row)
		}
		if v.Required && !strings.Contains(row, "(required)") {
			t.Errorf("%s is required, but its row says:\n%s", v.Name, row)
		}
	}

	// QUERYCOP_BACKEND_* are what the token command receives, not
	// configuration, so only GATEKEEPER_ names are checked. A word boundary
	// keeps those from matching inside longer names.
	for _, name := range regexp.MustCompile(`\bGATEKEEPER_[A-Z0-9_]+`).FindAllString(doc, -1) {
		if !known[name] {
			if strings.HasSuffix(name, "_") {
				t.Errorf("%s names a variable family (%s); write the variables out in full", configDoc, name)
				continue
			}
			// One deliberate typo illustrates the unknown-variable warning.
			if name == "GATEKEEPER_BACKEND_TLSMODE" {
				continue
			}
			t.Errorf("%s names %s, which the code does not read", configDoc, name)
		}
	}
	if !known["ADMIN_API_KEY"] || !strings.Contains(doc, "ADMIN_API_KEY") {
		t.Error("ADMIN_API_KEY must be read by the code and documented")
	}
}

// tableRow returns the first table row whose first cell is `name`.
func tableRow(doc, name string) string {
	for _, line := range strings.Split(doc, "\n") {
		if strings.HasPrefix(line, "| `"+name+"` |") {
			return line
		}
	}
	return ""
}

// TestConfigurationDocKeepsLinkedSections guards the section numbers
// cookbooks link to.
func TestConfigurationDocKeepsLinkedSections(t *testing.T) {
	data, err := os.ReadFile(configDoc)
	if err != nil {
		t.Fatal(err)
	}
	for _, heading := range []string{
		"## 1. Backend", "### 1.5 Backend TLS", "### 1.6 `GATEKEEPER_BACKEND_TOKEN_CMD`",
		"## 2. Listening and client TLS", "## 3. Pool", "## 4. Admin API", "## 5. Logging", "## 7. Start-up checks",
	} {
		if !strings.Contains(string(data), "\n"+heading+"\n") {
			t.Errorf("%s lacks the heading %q", configDoc, heading)
		}
	}
}
