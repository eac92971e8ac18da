// Command spotml runs machine-learning work on spot capacity: the control
// plane, the node agent and the CLI are all this one binary.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	stopProfile := startCPUProfile(os.Getenv, os.Args[1:])
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stopProfile()
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(exitCode(err))
	}
}

// exitError carries a specific exit status (wait: 1 failed, 2 timed out).
type exitError struct {
	code int
	err  error
}

func (e exitError) Error() string { return e.err.Error() }
func (e exitError) Unwrap() error { return e.err }

func exitCode(err error) int {
	if e, ok := err.(exitError); ok {
		return e.code
	}
	return 1
}

// run is the whole program; main only wires the process to it.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	root := newRoot(ctx, getenv, stdout, stderr)
	root.SetArgs(args)
	return root.ExecuteContext(ctx)
}
