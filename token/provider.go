package token

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode"

	"github.com/querycop/querycop/internal/confcheck"
)

// Provider names, as GATEKEEPER_BACKEND_TOKEN_PROVIDER spells them.
const (
	ProviderCommand = "command"
	ProviderAzure   = "azure"
	ProviderAWSRDS  = "aws-rds"
	ProviderGCP     = "gcp"
)

// providers lists the values GATEKEEPER_BACKEND_TOKEN_PROVIDER accepts.
var providers = []string{ProviderCommand, ProviderAzure, ProviderAWSRDS, ProviderGCP}

const envProvider = "GATEKEEPER_BACKEND_TOKEN_PROVIDER"

// ProviderName is the provider in force: the configured one, "command" when
// only GATEKEEPER_BACKEND_TOKEN_CMD is set, and "" in pass-through mode.
func (c Config) ProviderName() string {
	if p := strings.TrimSpace(c.Provider); p != "" {
		return p
	}
	if c.Cmd != "" {
		return ProviderCommand
	}
	return ""
}

// TokenMode reports whether backend connections authenticate with a minted
// token rather than the client's password.
func (c Config) TokenMode() bool { return c.ProviderName() != "" }

// Built-in providers are the ones minting in-process through a cloud SDK.
func builtin(name string) bool {
	return name == ProviderAzure || name == ProviderAWSRDS || name == ProviderGCP
}

// timedMinter is a Minter that knows when its token expires, as the cloud
// SDKs do (an RDS token is opaque, a Google access token too); Source
// prefers that expiry to the JWT's exp and to Config.Lifetime.
type timedMinter interface {
	MintTimed(ctx context.Context, t Target) (value string, expiry time.Time, err error)
}

// mintOnce runs m once for t: the seam between Source and the providers.
func mintOnce(ctx context.Context, m Minter, t Target) (string, time.Time, error) {
	if tm, ok := m.(timedMinter); ok {
		return tm.MintTimed(ctx, t)
	}
	v, err := m.Mint(ctx, t)
	return v, time.Time{}, err
}

// Identifier is implemented by the built-in providers: it says whom a token
// minted by them stands for (for `querycop check`), never the token.
type Identifier interface {
	Identity(ctx context.Context, value string) (string, error)
}

// Named is implemented by every Minter this package makes.
type Named interface {
	ProviderName() string
}

// ProviderName is "command".
func (c *Command) ProviderName() string { return ProviderCommand }

// NewMinter returns the Minter for cfg's provider, which must have passed
// Validate, or nil in pass-through mode. A built-in provider reads its
// cloud SDK's configuration here, so a missing region or an unusable
// credential set-up stops start-up rather than the first client.
func NewMinter(ctx context.Context, cfg Config) (Minter, error) {
	switch name := cfg.ProviderName(); name {
	case "":
		return nil, nil
	case ProviderCommand:
		return NewCommand(cfg), nil
	case ProviderAzure:
		p, err := newAzure(cfg)
		return bound(p, err, cfg)
	case ProviderAWSRDS:
		p, err := newAWSRDS(ctx, cfg)
		return bound(p, err, cfg)
	case ProviderGCP:
		p, err := newGCP(cfg)
		return bound(p, err, cfg)
	default:
		return nil, fmt.Errorf("%s=%q is not one of %s", envProvider, name, strings.Join(providers, ", "))
	}
}

// providerError is a provider's failure in the documented form
// "backend token provider failed: <provider>: <cause>". The cause is the
// SDK's error folded onto one bounded line: SDK errors span several lines
// (a credential chain lists every attempt) and no log line or client
// message should.
func providerError(provider string, err error) *Error {
	var te *Error
	if errors.As(err, &te) {
		if te.Provider == "" {
			te.Provider = provider
		}
		return te
	}
	return &Error{Provider: provider, Reason: sdkCause(err), Err: err}
}

// sdkCause is an SDK's error as one bounded line, masked like the command's
// output (mask.go): an SDK that quotes a response body could otherwise
// echo a credential.
func sdkCause(err error) string { return oneLine(safeLine(err.Error(), ""), maxReason+len("…")) }

// maxCause bounds the cause shown for the Azure chain, which says what
// each of its sources answered.
const maxCause = 700

// oneLine folds runs of white space (newlines, tabs) to one space and cuts
// s to at most max bytes, on a rune boundary.
func oneLine(s string, max int) string {
	var b strings.Builder
	space := false
	for _, r := range strings.TrimSpace(s) {
		if unicode.IsSpace(r) {
			space = true
			continue
		}
		if space {
			b.WriteByte(' ')
			space = false
		}
		if b.Len()+len(string(r)) > max {
			b.WriteString("…")
			break
		}
		b.WriteRune(r)
	}
	return b.String()
}

// validateProvider adds cfg's provider problems to problems.
func (c Config) validateProvider() []error {
	var problems []error
	p := strings.TrimSpace(c.Provider)
	switch {
	case p == "":
	case !contains(providers, p):
		problems = append(problems, problem([]string{envProvider},
			fmt.Sprintf("%s=%q is not a token provider; use one of %s, or unset it for pass-through mode (or the command alone)",
				envProvider, c.Provider, strings.Join(providers, ", "))))
	case p == ProviderCommand && c.Cmd == "":
		problems = append(problems, problem([]string{envProvider, envCmd},
			fmt.Sprintf("%s=command needs %s, the command that prints the token", envProvider, envCmd)))
	case builtin(p) && c.Cmd != "":
		problems = append(problems, problem([]string{envProvider, envCmd},
			fmt.Sprintf("%s=%s and %s are both set: the %s provider mints the token itself; unset %s, or set %s=command to keep the command",
				envProvider, p, envCmd, p, envCmd, envProvider)))
	}
	if c.AzureClientID != "" && p != ProviderAzure {
		problems = append(problems, problem([]string{envAzureClientID, envProvider},
			fmt.Sprintf("%s is set but %s is not azure; it is read only by the azure provider", envAzureClientID, envProvider)))
	}
	if c.AWSRegion != "" && p != ProviderAWSRDS {
		problems = append(problems, problem([]string{envAWSRegion, envProvider},
			fmt.Sprintf("%s is set but %s is not aws-rds; it is read only by the aws-rds provider", envAWSRegion, envProvider)))
	}
	if p == ProviderGCP && len(gcpScopes(c.GCPScopes)) == 0 {
		problems = append(problems, problem([]string{envGCPScopes},
			fmt.Sprintf("%s is empty; the gcp provider needs at least one OAuth scope, e.g. https://www.googleapis.com/auth/sqlservice.login", envGCPScopes)))
	}
	return problems
}

const (
	envAzureClientID = "GATEKEEPER_BACKEND_TOKEN_AZURE_CLIENT_ID"
	envAWSRegion     = "GATEKEEPER_BACKEND_TOKEN_AWS_REGION"
	envGCPScopes     = "GATEKEEPER_BACKEND_TOKEN_GCP_SCOPES"
)

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func problem(vars []string, msg string) error { return confcheck.Problem{Vars: vars, Msg: msg} }

// error is a failure of s's own (not the minter's), worded for its provider.
func (s *Source) error(reason string, cause error) *Error {
	return &Error{Provider: s.provider, Reason: reason, Err: cause}
}

// printed says how the token came, for the Source's own error texts.
func (s *Source) printed() string {
	if s.provider != "" {
		return "the provider returned"
	}
	return "the command printed"
}

// whose says whose cache may have handed back an old token.
func (s *Source) whose() string {
	if s.provider != "" {
		return "provider's"
	}
	return "command's"
}

// Provider is the name of the provider s mints with: "command" or a
// built-in provider's; shown by /v1/token and the metrics.
func (s *Source) Provider() string {
	if s.provider != "" {
		return s.provider
	}
	return ProviderCommand
}

// builtinProvider is what each built-in provider implements.
type builtinProvider interface {
	timedMinter
	Named
	Identifier
}

// bounded limits every call into a provider to Config.Timeout
// (GATEKEEPER_BACKEND_TOKEN_TIMEOUT), as the command is limited: a cloud
// endpoint that accepts the connection and never answers must not hold the
// one mint in flight for a role, on which every new login of that role
// waits, forever. Not every SDK call takes a context (the oauth2 package's
// metadata requests do not), so the call runs in its own goroutine and is
// abandoned, not waited for, when the time is up.
type bounded struct {
	p       builtinProvider
	timeout time.Duration
}

func bound[P builtinProvider](p P, err error, cfg Config) (Minter, error) {
	if err != nil {
		return nil, err
	}
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = defaultTimeout
	}
	return &bounded{p: p, timeout: timeout}, nil
}

// errProviderTimeout is the cause of a provider call's context when
// Config.Timeout fires.
var errProviderTimeout = errors.New("token provider timed out")

func (b *bounded) ProviderName() string { return b.p.ProviderName() }

// Mint implements Minter.
func (b *bounded) Mint(ctx context.Context, t Target) (string, error) {
	v, _, err := b.MintTimed(ctx, t)
	return v, err
}

// MintTimed implements timedMinter.
func (b *bounded) MintTimed(ctx context.Context, t Target) (string, time.Time, error) {
	type result struct {
		v   string
		exp time.Time
	}
	r, err := boundedCall(ctx, b, func(ctx context.Context) (result, error) {
		v, exp, err := b.p.MintTimed(ctx, t)
		return result{v, exp}, err
	})
	return r.v, r.exp, err
}

// Identity implements Identifier.
func (b *bounded) Identity(ctx context.Context, value string) (string, error) {
	return boundedCall(ctx, b, func(ctx context.Context) (string, error) { return b.p.Identity(ctx, value) })
}

func boundedCall[R any](ctx context.Context, b *bounded, f func(context.Context) (R, error)) (R, error) {
	ctx, cancel := context.WithTimeoutCause(ctx, b.timeout, errProviderTimeout)
	defer cancel()
	type result struct {
		r   R
		err error
	}
	ch := make(chan result, 1) // the goroutine never blocks, even abandoned
	go func() {
		r, err := f(ctx)
		ch <- result{r, err}
	}()
	var zero R
	select {
	case res := <-ch:
		if res.err != nil && context.Cause(ctx) == errProviderTimeout {
			return zero, b.timedOut()
		}
		return res.r, res.err
	case <-ctx.Done():
		if context.Cause(ctx) == errProviderTimeout {
			return zero, b.timedOut()
		}
		return zero, &Error{Provider: b.p.ProviderName(), Reason: "canceled: " + ctx.Err().Error(), Err: ctx.Err()}
	}
}

func (b *bounded) timedOut() *Error {
	return &Error{Provider: b.p.ProviderName(), Reason: "timed out after " + b.timeout.String(), Err: context.DeadlineExceeded}
}
