// Package admin owns the admin HTTP API on its own port: /healthz and
// /readyz for orchestrators, /metrics for Prometheus, the /v1 endpoints
// that show and steer the gateway (pools, clients, token, effective
// configuration, resize, pause, resume, drain) and the Go profiles. Every
// endpoint but the two probes (and /metrics with
// GATEKEEPER_API_METRICS_PUBLIC) wants ADMIN_API_KEY as a bearer token,
// compared in constant time.
//
// It reads the rest of the gateway only through the small interfaces it
// declares (Pools, Clients, Tokens in Deps) and owns no state of theirs:
// every answer and every scrape is built from fresh snapshots.
//
// Goroutines: net/http's, one per request; Serve runs the listener.
// Locks: readyMu guards the cached readiness verdict (reused for 2 s so
// probes do not dial the server each time), deniedMu the rate limit on
// the "wrong key" log line; draining is an atomic flag set at shutdown so
// /readyz fails while clients are let go.
package admin
