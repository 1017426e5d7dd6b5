package main

import (
	"fmt"
	"io"
	"text/tabwriter"
)

// envVar is one configuration variable as --help and the docs test see it,
// generated from the struct tags so neither can drift from the code.
type envVar struct {
	Name     string
	Default  string // envDefault, "" when there is none
	Help     string
	Required bool
}

// requiredVars are refused when empty by a package's Validate rather than
// by an env tag option, so the tags alone cannot tell.
var requiredVars = map[string]bool{
	"GATEKEEPER_BACKEND_HOST": true,
}

// envVars lists every variable Querycop reads, in Config order.
func envVars() []envVar {
	var out []envVar
	for _, s := range sections(&Config{}) {
		for _, l := range s.leaves {
			out = append(out, envVar{Name: l.key, Default: l.def, Help: l.help, Required: requiredVars[l.key]})
		}
	}
	return out
}

const usageText = `querycop: PostgreSQL connection-pooling gateway

Usage:
  querycop            run the gateway, configured from the environment
  querycop check [-user ROLE] [-database DB]
                      check the configuration, the token command, the
                      backend's address and TLS, and authentication, one
                      line per step (exit 0 ok, 1 a step failed, 2 bad
                      configuration)
  querycop healthcheck
                      GET /healthz on the local admin API (for a container
                      HEALTHCHECK); exit 0 when alive
  querycop version    print the version
  querycop help       print this help (also -h, --help)

Configuration is read from the environment only. Invalid configuration
stops start-up with every problem listed and exit status 2.
Full reference: docs/configuration.md

Variables:
`

// printUsage writes the usage text and one line per variable: name,
// default, meaning.
func printUsage(w io.Writer) {
	fmt.Fprint(w, usageText)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "  NAME\tDEFAULT\tMEANING")
	for _, v := range envVars() {
		def := v.Default
		switch {
		case v.Required:
			def = "(required)"
		case def == "":
			def = "(none)"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", v.Name, def, v.Help)
	}
	tw.Flush()
}
