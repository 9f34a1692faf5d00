// Command weftd is weft's per-host daemon: a drop-in flanneld for etcd mode.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/weft-net/weft/internal/daemon"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := daemon.Main(ctx, os.Args[1:], os.Stdout, os.Stderr, os.LookupEnv)
	stop()
	os.Exit(code)
}
