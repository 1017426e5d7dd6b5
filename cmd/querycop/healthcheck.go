package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// runHealthcheck is `querycop healthcheck`: GET /healthz on the local admin
// API, for a container HEALTHCHECK in an image that has no curl.
func runHealthcheck(environ []string, stderr io.Writer) int {
	cfg, err := LoadConfig(append(environ, "GATEKEEPER_BACKEND_HOST=unused-by-healthcheck"))
	addr, port := "127.0.0.1", 8080
	if err == nil {
		port = cfg.Admin.Port
		if a := cfg.Admin.Addr; a != "0.0.0.0" && a != "::" && a != "" {
			addr = a
		}
	}
	client := http.Client{Timeout: 3 * time.Second}
	resp, err := client.Get(fmt.Sprintf("http://%s/healthz", net.JoinHostPort(addr, fmt.Sprint(port))))
	if err != nil {
		fmt.Fprintf(stderr, "querycop: healthcheck: %v\n", err)
		return exitFailed
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(stderr, "querycop: healthcheck: %s\n", resp.Status)
		return exitFailed
	}
	return exitOK
}
