// Package wire owns the client side of the PostgreSQL protocol: the pool
// port listener, TLS to clients, the start-up phase (SSLRequest,
// GSSENCRequest, CancelRequest, protocol negotiation), client
// authentication, the handoff of a backend connection, the relay loop and
// the map of cancel keys.
//
// Goroutines: Serve runs the accept loop; each client gets one goroutine for
// its whole life, plus one more while it is attached to a backend (the
// backend-to-client pump). The relay walks message headers only, so it
// forwards whole buffers without allocating per message.
//
// Concurrency: a session's client socket is written by its backend pump
// and, at shutdown, by Shutdown; writeMu orders them. The cancel map is
// guarded by Server.mu and read by other clients' CancelRequests.
package wire
