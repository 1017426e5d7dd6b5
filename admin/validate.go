package admin

import (
	"errors"
	"fmt"
)

const envPort = "GATEKEEPER_API_PORT"

// Validate reports every problem with c at once, joined with errors.Join.
// Each problem names its variables (EnvVars) and says how to fix it.
func (c Config) Validate() error {
	var problems []error
	if c.Port < 1 || c.Port > 65535 {
		problems = append(problems, problem{vars: []string{envPort},
			msg: fmt.Sprintf("%s=%d is not a TCP port; use 1 to 65535", envPort, c.Port)})
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
