package main

import (
	"context"
	"errors"
	"io"
)

func healthcheckCommand(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	return errors.New("healthcheck: not built yet")
}
