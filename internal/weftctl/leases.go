package weftctl

import (
	"context"
	"errors"
)

// runLeases is a placeholder until its implementation lands.
func runLeases(ctx context.Context, env *Env, args []string) error {
	return errors.New("not implemented yet")
}
