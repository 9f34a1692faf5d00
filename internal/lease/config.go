package lease

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/netconf"
)

// WaitConfig returns the network config at s.ConfigKey() as soon as a valid
// one exists. It watches the key (no polling): a missing config is logged
// once ("waiting for network config"), an invalid one once per distinct
// value with the parse error, an unreachable etcd once per distinct error.
// The boot order of a cluster depends on this: hosts may start before the
// operator writes the config. It returns ctx.Err() promptly on cancel.
func WaitConfig(ctx context.Context, s *Store, parse func([]byte) (netconf.Config, error), log *slog.Logger) (netconf.Config, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	key := s.ConfigKey()
	var (
		waiting  bool   // "waiting" already said for the current absence
		lastBad  []byte // last invalid value logged
		badSeen  bool
		lastErr  string // last etcd error logged
		retry    = newBackoff(100*time.Millisecond, 5*time.Second)
		cfg      netconf.Config
		accepted bool
	)
	try := func(data []byte) bool {
		c, err := parse(data)
		if err != nil {
			if !badSeen || string(data) != string(lastBad) {
				log.Error("invalid network config; waiting for a valid one", "key", key, "value", string(data), "err", err)
				lastBad, badSeen = append([]byte(nil), data...), true
			}
			return false
		}
		cfg, accepted = c, true
		return true
	}
	missing := func() {
		if !waiting {
			log.Info("waiting for network config", "key", key)
			waiting = true
		}
		badSeen = false
	}
	for {
		data, rev, err := s.GetConfig(ctx)
		switch {
		case err == nil:
			waiting = false
			if try(data) {
				return cfg, nil
			}
		case errors.Is(err, ErrNoConfig):
			missing()
		default:
			if ctx.Err() != nil {
				return netconf.Config{}, ctx.Err()
			}
			if err.Error() != lastErr {
				log.Warn("reading network config failed; retrying", "key", key, "err", err)
				lastErr = err.Error()
			}
			if err := retry.wait(ctx); err != nil {
				return netconf.Config{}, err
			}
			continue
		}
		lastErr = ""
		// Watch from the revision we read at, so no write in between is lost.
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		for wresp := range s.cli.Watch(wctx, key, clientv3.WithRev(rev+1)) {
			if wresp.Err() != nil {
				break // compacted or leader lost: read again
			}
			for _, ev := range wresp.Events {
				if ev.Type == mvccpb.DELETE {
					missing()
					continue
				}
				waiting = false
				if try(ev.Kv.Value) {
					break
				}
			}
			if accepted {
				break
			}
			retry.reset()
		}
		cancel()
		if accepted {
			return cfg, nil
		}
		if err := retry.wait(ctx); err != nil {
			return netconf.Config{}, err
		}
	}
}

// backoff is an exponential retry delay with jitter, cancelled by ctx.
type backoff struct {
	first, max, next time.Duration
}

func newBackoff(first, max time.Duration) *backoff {
	return &backoff{first: first, max: max, next: first}
}

func (b *backoff) reset() { b.next = b.first }

// delay returns the next delay (with ±25% jitter, so that many hosts that
// failed together do not retry together) and doubles it.
func (b *backoff) delay() time.Duration {
	d := b.next
	b.next = min(2*b.next, b.max)
	return d*3/4 + jitter(d/2)
}

func (b *backoff) wait(ctx context.Context) error {
	t := time.NewTimer(b.delay())
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
