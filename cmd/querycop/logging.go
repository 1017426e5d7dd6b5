package main

import (
	"io"
	"time"

	"github.com/rs/zerolog"
)

// newLogger returns the process logger. It is passed down explicitly, and
// the level is set on this logger only, never zerolog's global, so tests
// and libraries that log on their own are unaffected.
func newLogger(cfg LogConfig, w io.Writer) zerolog.Logger {
	out := w
	if cfg.Format == "console" {
		out = zerolog.ConsoleWriter{Out: w, TimeFormat: time.RFC3339}
	}
	return zerolog.New(out).Level(cfg.Level).With().Timestamp().Str("service", "querycop").Logger()
}
