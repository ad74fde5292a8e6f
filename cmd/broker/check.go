package main

import (
	"context"
	"errors"
	"io"
)

func checkCommand(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	return errors.New("check: not built yet")
}
