package admin

import (
	"errors"
	"fmt"

	"github.com/querycop/querycop/internal/confcheck"
)

var envPort = confcheck.Var(Config{}, "GATEKEEPER_", "Port")

// Validate reports every problem with c at once, joined with errors.Join.
// Each problem names its variables (EnvVars) and says how to fix it.
func (c Config) Validate() error {
	var problems []error
	if c.Port < 1 || c.Port > 65535 {
		problems = append(problems, confcheck.Problem{Vars: []string{envPort},
			Msg: fmt.Sprintf("%s=%d is not a TCP port; use 1 to 65535", envPort, c.Port)})
	}
	return errors.Join(problems...)
}
