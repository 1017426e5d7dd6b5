package admin

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/pprof"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/rs/zerolog"

	"github.com/querycop/querycop/pool"
	"github.com/querycop/querycop/token"
	"github.com/querycop/querycop/wire"
)

// Pools is what the admin API reads and steers in the pools.
type Pools interface {
	Stats() []pool.Stats
	Resize(database, user string, size int) int
	Pause()
	Resume()
	Paused() bool
	Drain() int
}

// Clients is the read-only view of the client side.
type Clients interface {
	Clients() []wire.ClientInfo
	Stats() wire.Stats
}

// Tokens is the read-only view of the token source; nil in pass-through
// mode.
type Tokens interface {
	Status() []token.Status
}

// Deps are the views the admin API serves. Ready reports whether the
// gateway can serve a client now (probing the backend if it must); its
// answer is cached briefly so probes do not dial on every call.
type Deps struct {
	Pools   Pools
	Clients Clients
	Tokens  Tokens
	Ready   func(ctx context.Context) error
	// Config is the effective configuration, secrets already redacted.
	Config any
}

// readyCacheFor is how long a readiness verdict is reused.
const readyCacheFor = 2 * time.Second

// Server is the admin HTTP API.
type Server struct {
	cfg  Config
	key  []byte
	deps Deps
	log  zerolog.Logger
	http *http.Server
	ln   net.Listener

	draining atomic.Bool

	readyMu   sync.Mutex
	readyAt   time.Time
	readyErr  error
	deniedMu  sync.Mutex
	deniedLog time.Time
	denied    int
}

// NewServer builds the API. An empty key leaves every protected endpoint
// answering 403.
func NewServer(cfg Config, key string, deps Deps, log zerolog.Logger) *Server {
	s := &Server{cfg: cfg, key: []byte(key), deps: deps, log: log}
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		newCollector(deps, s.ready),
	)
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", s.healthz)
	mux.HandleFunc("GET /readyz", s.readyz)
	metrics := promhttp.HandlerFor(reg, promhttp.HandlerOpts{})
	if cfg.MetricsPublic {
		mux.Handle("GET /metrics", metrics)
	} else {
		mux.Handle("GET /metrics", s.protect(metrics.ServeHTTP))
	}
	mux.HandleFunc("GET /v1/pools", s.protect(s.pools))
	mux.HandleFunc("PUT /v1/pools/size", s.protect(s.resize))
	mux.HandleFunc("GET /v1/clients", s.protect(s.clients))
	mux.HandleFunc("GET /v1/token", s.protect(s.token))
	mux.HandleFunc("GET /v1/config", s.protect(s.config))
	mux.HandleFunc("POST /v1/pause", s.protect(s.pause))
	mux.HandleFunc("POST /v1/resume", s.protect(s.resume))
	mux.HandleFunc("POST /v1/drain", s.protect(s.drain))
	// Go profiles, for the performance work and for support cases; behind
	// the key like everything that says how the gateway runs.
	mux.HandleFunc("GET /debug/pprof/", s.protect(pprof.Index))
	mux.HandleFunc("GET /debug/pprof/profile", s.protect(pprof.Profile))
	mux.HandleFunc("GET /debug/pprof/trace", s.protect(pprof.Trace))
	mux.HandleFunc("GET /debug/pprof/cmdline", s.protect(pprof.Cmdline))
	mux.HandleFunc("GET /debug/pprof/symbol", s.protect(pprof.Symbol))
	s.http = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      90 * time.Second, // a CPU profile takes 30s by default
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    16 << 10,
	}
	if key == "" {
		log.Warn().Msg("ADMIN_API_KEY is unset: every admin endpoint except /healthz and /readyz answers 403")
	}
	return s
}

// Listen opens the admin port.
func (s *Server) Listen() error {
	addr := net.JoinHostPort(s.cfg.Addr, strconv.Itoa(s.cfg.Port))
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listening on %s for the admin API: %w", addr, err)
	}
	s.ln = ln
	return nil
}

// Addr is where the API listens.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Serve serves until Shutdown.
func (s *Server) Serve() error {
	if err := s.http.Serve(s.ln); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// Shutdown stops the API, letting requests in progress finish until ctx ends.
func (s *Server) Shutdown(ctx context.Context) error { return s.http.Shutdown(ctx) }

// SetDraining turns /readyz to 503 for good: the gateway is shutting down.
func (s *Server) SetDraining() { s.draining.Store(true) }

func (s *Server) healthz(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
}

func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	if reason := s.notReady(r.Context()); reason != "" {
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"status": "unavailable", "reason": reason})
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"status": "ready"})
}

// ready is /readyz's verdict for the querycop_ready metric, so an alert
// can see what the load balancer sees.
func (s *Server) ready(ctx context.Context) bool { return s.notReady(ctx) == "" }

// notReady is /readyz's reason, empty when ready.
func (s *Server) notReady(ctx context.Context) string {
	if s.draining.Load() {
		return "shutting down"
	}
	if s.deps.Pools != nil && s.deps.Pools.Paused() {
		return "paused through the admin API"
	}
	if err := s.checkReady(ctx); err != nil {
		// No key is needed for /readyz, so the answer says what kind of
		// problem it is and no more (no address, no token command
		// output); the log has the details.
		var nr *NotReady
		if errors.As(err, &nr) {
			return nr.Public
		}
		return "not ready"
	}
	return ""
}

func (s *Server) checkReady(ctx context.Context) error {
	s.readyMu.Lock()
	defer s.readyMu.Unlock()
	if time.Since(s.readyAt) < readyCacheFor {
		return s.readyErr
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	prev := s.readyErr
	s.readyErr = nil
	if s.deps.Ready != nil {
		s.readyErr = s.deps.Ready(ctx)
	}
	s.readyAt = time.Now()
	switch {
	case s.readyErr != nil && (prev == nil || prev.Error() != s.readyErr.Error()):
		s.log.Warn().Str("error", s.readyErr.Error()).Msg("not ready")
	case s.readyErr == nil && prev != nil:
		s.log.Info().Msg("ready again")
	}
	return s.readyErr
}

// NotReady is a readiness failure: Public is all /readyz tells a caller
// without the key; Err, with the details, goes to the log.
type NotReady struct {
	Public string
	Err    error
}

func (e *NotReady) Error() string { return e.Public + ": " + e.Err.Error() }
func (e *NotReady) Unwrap() error { return e.Err }

// protect requires the bearer key, compared in constant time.
func (s *Server) protect(next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if len(s.key) == 0 {
			writeJSON(w, http.StatusForbidden, map[string]string{"error": "ADMIN_API_KEY is unset, so this endpoint is disabled; set ADMIN_API_KEY and restart"})
			return
		}
		given, ok := bearer(r.Header.Get("Authorization"))
		if !ok || subtle.ConstantTimeCompare([]byte(given), s.key) != 1 {
			s.logDenied(r)
			w.Header().Set("WWW-Authenticate", `Bearer realm="querycop"`)
			writeJSON(w, http.StatusUnauthorized, map[string]string{"error": "missing or wrong bearer key (Authorization: Bearer <ADMIN_API_KEY>)"})
			return
		}
		next(w, r)
	}
}

// bearer returns the credential of an Authorization header of the Bearer
// scheme, whose name is case-insensitive (RFC 9110 §11.1).
func bearer(header string) (string, bool) {
	scheme, cred, ok := strings.Cut(header, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	return strings.TrimLeft(cred, " "), true
}

// logDenied logs refused callers at most once every 10 seconds, with how
// many were refused in between, so a scanner cannot flood the log.
func (s *Server) logDenied(r *http.Request) {
	s.deniedMu.Lock()
	defer s.deniedMu.Unlock()
	s.denied++
	if time.Since(s.deniedLog) < 10*time.Second {
		return
	}
	s.log.Warn().Str("remote", r.RemoteAddr).Str("path", r.URL.Path).Int("refused_since_last_line", s.denied).Msg("admin API request refused: missing or wrong key")
	s.deniedLog = time.Now()
	s.denied = 0
}

func (s *Server) pools(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"paused": s.deps.Pools.Paused(), "pools": nonNil(s.deps.Pools.Stats())})
}

// resizeRequest is the body of PUT /v1/pools/size. Without database and
// user it sets every pool and the default for new ones.
type resizeRequest struct {
	Size     int    `json:"size"`
	Database string `json:"database"`
	User     string `json:"user"`
}

func (s *Server) resize(w http.ResponseWriter, r *http.Request) {
	var req resizeRequest
	if err := decodeStrict(http.MaxBytesReader(w, r.Body, 4096), &req); err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "body must be JSON like {\"size\": 30, \"database\": \"appdb\", \"user\": \"app\"} (database and user optional): " + err.Error()})
		return
	}
	if req.Size < 1 || req.Size > 100000 {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "size must be between 1 and 100000"})
		return
	}
	n := s.deps.Pools.Resize(req.Database, req.User, req.Size)
	s.log.Info().Int("size", req.Size).Str("db", req.Database).Str("user", req.User).Int("pools", n).Msg("pool size changed through the admin API")
	writeJSON(w, http.StatusOK, map[string]any{"size": req.Size, "pools_changed": n})
}

// decodeStrict decodes one JSON object into v, a struct with json tags,
// refusing what encoding/json lets through: data after the object, and
// field names that match a tag only case-insensitively ({"SIZE": 6}) or
// not at all.
func decodeStrict(r io.Reader, v any) error {
	dec := json.NewDecoder(r)
	var fields map[string]json.RawMessage
	if err := dec.Decode(&fields); err != nil {
		return err
	}
	if _, err := dec.Token(); err != io.EOF {
		return errors.New("data after the JSON object")
	}
	known := map[string]bool{}
	t := reflect.TypeOf(v).Elem()
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ",")
		known[name] = true
	}
	for name := range fields {
		if !known[name] {
			return fmt.Errorf("unknown field %q", name)
		}
	}
	whole, _ := json.Marshal(fields)
	return json.Unmarshal(whole, v)
}

func (s *Server) clients(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, map[string]any{"clients": nonNil(s.deps.Clients.Clients())})
}

func (s *Server) token(w http.ResponseWriter, _ *http.Request) {
	if s.deps.Tokens == nil {
		writeJSON(w, http.StatusOK, map[string]any{"mode": "pass-through", "tokens": []token.Status{}})
		return
	}
	body := map[string]any{"mode": "token", "tokens": nonNil(s.deps.Tokens.Status())}
	if p, ok := s.deps.Tokens.(interface{ Provider() string }); ok {
		body["provider"] = p.Provider()
	}
	writeJSON(w, http.StatusOK, body)
}

func (s *Server) config(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, s.deps.Config)
}

func (s *Server) pause(w http.ResponseWriter, _ *http.Request) {
	s.deps.Pools.Pause()
	s.log.Info().Msg("pools paused through the admin API")
	writeJSON(w, http.StatusOK, map[string]any{"paused": true})
}

func (s *Server) resume(w http.ResponseWriter, _ *http.Request) {
	s.deps.Pools.Resume()
	s.log.Info().Msg("pools resumed through the admin API")
	writeJSON(w, http.StatusOK, map[string]any{"paused": false})
}

func (s *Server) drain(w http.ResponseWriter, _ *http.Request) {
	n := s.deps.Pools.Drain()
	s.log.Info().Int("connections", n).Msg("pools drained through the admin API")
	writeJSON(w, http.StatusOK, map[string]any{"connections_to_retire": n})
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}
