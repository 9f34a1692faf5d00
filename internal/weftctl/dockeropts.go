package weftctl

import (
	"context"
	"errors"
	"fmt"

	"github.com/weft-net/weft/internal/dockeropts"
)

// runDockerOpts is mk-docker-opts.sh: same flags (-f -d -i -c -k -m, getopts
// style), same output, but a missing or broken subnet.env is an error and
// leaves the output file untouched.
func runDockerOpts(_ context.Context, env *Env, args []string) error {
	o, err := dockeropts.ParseArgs(args)
	if errors.Is(err, dockeropts.ErrHelp) {
		fmt.Fprint(env.Stdout, dockeropts.Usage)
		return nil
	}
	if err != nil {
		fmt.Fprint(env.Stderr, dockeropts.Usage)
		return &UsageError{Msg: err.Error()}
	}
	return dockeropts.Run(o, env.LookupEnv)
}
