package main

import (
	"context"
	"errors"
	"io"
)

func checkCommand(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	return errors.New("check: not built yet")
}

// checkAtStartup refuses to serve when gl_config.json (c.glConfig) does not
// route c.pools through this broker.
func checkAtStartup(c config) error {
	return errors.New("gl-config: the check is not built yet")
}
