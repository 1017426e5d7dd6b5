package token

import (
	"errors"
	"fmt"
	"strings"
)

// Names as the operator writes them: Config is always nested under the
// backend's prefix, and these names are product-stable.
const (
	envCmd      = "GATEKEEPER_BACKEND_TOKEN_CMD"
	envTimeout  = "GATEKEEPER_BACKEND_TOKEN_TIMEOUT"
	envLifetime = "GATEKEEPER_BACKEND_TOKEN_LIFETIME"
	envMargin   = "GATEKEEPER_BACKEND_TOKEN_REFRESH_MARGIN"
)

// Validate reports every problem with c at once, joined with errors.Join.
// Each problem names its variables (EnvVars) and never contains Cmd, which
// may carry a credential of its own.
func (c Config) Validate() error {
	var problems []error
	if c.Cmd != "" && strings.TrimSpace(c.Cmd) == "" {
		problems = append(problems, problem{vars: []string{envCmd},
			msg: envCmd + " is blank; unset it to use the client's password, or give the command that prints the token"})
	}
	if c.Timeout <= 0 {
		problems = append(problems, problem{vars: []string{envTimeout},
			msg: fmt.Sprintf("%s=%s must be positive; use a duration such as 30s", envTimeout, c.Timeout)})
	}
	if c.Lifetime <= 0 {
		problems = append(problems, problem{vars: []string{envLifetime},
			msg: fmt.Sprintf("%s=%s must be positive; use a duration such as 15m", envLifetime, c.Lifetime)})
	}
	if c.RefreshMargin < 0 || (c.Lifetime > 0 && c.RefreshMargin >= c.Lifetime) {
		problems = append(problems, problem{vars: []string{envMargin, envLifetime},
			msg: fmt.Sprintf("%s=%s must be at least 0 and below %s (%s)", envMargin, c.RefreshMargin, envLifetime, c.Lifetime)})
	}
	return errors.Join(problems...)
}

// problem is one configuration mistake, naming the variables it concerns.
type problem struct {
	vars []string
	msg  string
}

func (p problem) Error() string { return p.msg }

// EnvVars lists the environment variables the problem concerns.
func (p problem) EnvVars() []string { return p.vars }
