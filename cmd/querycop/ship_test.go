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
