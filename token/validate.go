package token

import (
	"errors"
	"fmt"
	"strings"

	"github.com/querycop/querycop/internal/confcheck"
)

// Names as the operator writes them: Config is always nested under the
// backend's prefix, and these names are product-stable.
var (
	envCmd      = confcheck.Var(Config{}, "GATEKEEPER_BACKEND_TOKEN_", "Cmd")
	envTimeout  = confcheck.Var(Config{}, "GATEKEEPER_BACKEND_TOKEN_", "Timeout")
	envLifetime = confcheck.Var(Config{}, "GATEKEEPER_BACKEND_TOKEN_", "Lifetime")
	envMargin   = confcheck.Var(Config{}, "GATEKEEPER_BACKEND_TOKEN_", "RefreshMargin")
)

// Validate reports every problem with c at once, joined with errors.Join.
// Each problem names its variables (EnvVars) and never contains Cmd, which
// may carry a credential of its own.
func (c Config) Validate() error {
	var problems []error
	if c.Cmd != "" && strings.TrimSpace(c.Cmd) == "" {
		problems = append(problems, confcheck.Problem{Vars: []string{envCmd},
			Msg: envCmd + " is blank; unset it to use the client's password, or give the command that prints the token"})
	}
	if c.Timeout <= 0 {
		problems = append(problems, confcheck.Problem{Vars: []string{envTimeout},
			Msg: fmt.Sprintf("%s=%s must be positive; use a duration such as 30s", envTimeout, c.Timeout)})
	}
	if c.Lifetime <= 0 {
		problems = append(problems, confcheck.Problem{Vars: []string{envLifetime},
			Msg: fmt.Sprintf("%s=%s must be positive; use a duration such as 15m", envLifetime, c.Lifetime)})
	}
	if c.RefreshMargin < 0 || (c.Lifetime > 0 && c.RefreshMargin >= c.Lifetime) {
		problems = append(problems, confcheck.Problem{Vars: []string{envMargin, envLifetime},
			Msg: fmt.Sprintf("%s=%s must be at least 0 and below %s (%s)", envMargin, c.RefreshMargin, envLifetime, c.Lifetime)})
	}
	problems = append(problems, c.validateProvider()...)
	return errors.Join(problems...)
}
