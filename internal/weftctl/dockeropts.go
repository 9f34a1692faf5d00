package weftctl

import (
	"context"
	"errors"
)

// runDockerOpts is a placeholder until its implementation lands.
func runDockerOpts(ctx context.Context, env *Env, args []string) error {
	return errors.New("not implemented yet")
}
