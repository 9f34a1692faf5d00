package weftctl

import (
	"context"
	"errors"
)

// runConfig is a placeholder until its implementation lands.
func runConfig(ctx context.Context, env *Env, args []string) error {
	return errors.New("not implemented yet")
}
