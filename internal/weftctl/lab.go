package weftctl

import (
	"context"
	"errors"
)

// runLab is a placeholder until its implementation lands.
func runLab(ctx context.Context, env *Env, args []string) error {
	return errors.New("not implemented yet")
}
