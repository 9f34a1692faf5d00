// Package latest hands the newest value of some state — a lease snapshot, a
// network config — from the goroutine that produces it to the one that acts
// on it. Only the newest value matters (it supersedes every earlier one), so
// a producer never waits for a slow consumer and a consumer never works
// through a backlog.
package latest

// Send puts v on ch, replacing a value not yet received; it never blocks.
// ch must have a capacity of at least 1. With several producers a send may
// replace a newer value than its own, so each channel should have one.
func Send[T any](ch chan T, v T) {
	for {
		select {
		case ch <- v:
			return
		default:
			select {
			case <-ch:
			default:
			}
		}
	}
}

// Drain returns the newest of v and the values already queued on ch, so a
// burst costs the consumer one action. ok is false when ch was closed (the
// newest value is still returned).
func Drain[T any](ch <-chan T, v T) (newest T, ok bool) {
	for {
		select {
		case n, open := <-ch:
			if !open {
				return v, false
			}
			v = n
		default:
			return v, true
		}
	}
}
