// Command weftctl administers a weft network: config, leases, Docker options,
// doctor and the one-machine lab.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/weft-net/weft/internal/weftctl"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := weftctl.Run(ctx, os.Args[1:], &weftctl.Env{Stdout: os.Stdout, Stderr: os.Stderr})
	stop()
	os.Exit(code)
}
