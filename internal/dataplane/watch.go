package dataplane

import (
	"log/slog"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/weft-net/weft/internal/rtnl"
)

// watchFilter says which kernel notifications may mean the dataplane drifted.
// Only removals and a downed device are interesting: weft's own adds would
// otherwise wake the loop once per installed entry.
type watchFilter struct {
	link  func(netlink.LinkUpdate) bool
	route func(netlink.RouteUpdate) bool
	neigh func(netlink.NeighUpdate) bool
	addr  func(netlink.AddrUpdate) bool
	// nexthop is nil when no driver uses nexthop objects: no subscription.
	nexthop func(rtnl.NexthopUpdate) bool
}

// watcher turns kernel notifications into a coalesced "maybe dirty" signal.
// A subscription that dies (its socket overflowed during a large batch, for
// example) is re-opened, and the loop is poked because events were lost.
type watcher struct {
	ch   chan struct{}
	done chan struct{}
	wg   sync.WaitGroup
	ns   *netns.NsHandle
	log  *slog.Logger
	once sync.Once
}

// subscription buffers are large because one apply of 5,000 peers makes
// ~15,000 notifications; an overflow only costs a re-subscribe and a poke.
const watchRcvBuf = 8 << 20

func newWatcher(ns *netns.NsHandle, log *slog.Logger) *watcher {
	return &watcher{ch: make(chan struct{}, 1), done: make(chan struct{}), ns: ns, log: log}
}

func (w *watcher) poke() {
	select {
	case w.ch <- struct{}{}:
	default:
	}
}

// start opens the subscriptions the filter asks for.
func (w *watcher) start(f watchFilter) {
	errCB := func(err error) { w.log.Debug("netlink subscription error; re-subscribing", "err", err) }
	if f.link != nil {
		w.keep("link", func(done chan struct{}) (func(), error) {
			ch := make(chan netlink.LinkUpdate, 16)
			err := netlink.LinkSubscribeWithOptions(ch, done, netlink.LinkSubscribeOptions{
				Namespace: w.ns, ErrorCallback: errCB, ReceiveBufferSize: watchRcvBuf, ReceiveBufferForceSize: true})
			return func() {
				for u := range ch {
					if f.link(u) {
						w.poke()
					}
				}
			}, err
		})
	}
	if f.route != nil {
		w.keep("route", func(done chan struct{}) (func(), error) {
			ch := make(chan netlink.RouteUpdate, 64)
			err := netlink.RouteSubscribeWithOptions(ch, done, netlink.RouteSubscribeOptions{
				Namespace: w.ns, ErrorCallback: errCB, ReceiveBufferSize: watchRcvBuf, ReceiveBufferForceSize: true})
			return func() {
				for u := range ch {
					if f.route(u) {
						w.poke()
					}
				}
			}, err
		})
	}
	if f.neigh != nil {
		w.keep("neigh", func(done chan struct{}) (func(), error) {
			ch := make(chan netlink.NeighUpdate, 64)
			err := netlink.NeighSubscribeWithOptions(ch, done, netlink.NeighSubscribeOptions{
				Namespace: w.ns, ErrorCallback: errCB, ReceiveBufferSize: watchRcvBuf, ReceiveBufferForceSize: true})
			return func() {
				for u := range ch {
					if f.neigh(u) {
						w.poke()
					}
				}
			}, err
		})
	}
	if f.nexthop != nil {
		w.keep("nexthop", func(done chan struct{}) (func(), error) {
			ch := make(chan rtnl.NexthopUpdate, 64)
			err := rtnl.SubscribeNexthops(w.ns, ch, done, watchRcvBuf)
			return func() {
				for u := range ch {
					if f.nexthop(u) {
						w.poke()
					}
				}
			}, err
		})
	}
	if f.addr != nil {
		w.keep("addr", func(done chan struct{}) (func(), error) {
			ch := make(chan netlink.AddrUpdate, 16)
			err := netlink.AddrSubscribeWithOptions(ch, done, netlink.AddrSubscribeOptions{
				Namespace: w.ns, ErrorCallback: errCB, ReceiveBufferSize: watchRcvBuf, ReceiveBufferForceSize: true})
			return func() {
				for u := range ch {
					if f.addr(u) {
						w.poke()
					}
				}
			}, err
		})
	}
}

// keep runs one subscription until Close, re-opening it when it ends.
func (w *watcher) keep(kind string, open func(done chan struct{}) (drain func(), err error)) {
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		first := true
		for {
			sub := make(chan struct{})
			drain, err := open(sub)
			if err != nil {
				close(sub)
				w.log.Warn("subscribe to kernel notifications failed; relying on periodic resync until it works", "kind", kind, "err", err)
			} else {
				if !first {
					w.poke() // notifications may have been lost in between
				}
				stop := make(chan struct{})
				// Closing sub ends the library's socket goroutine, on
				// shutdown and after a subscription died on its own.
				go func() {
					select {
					case <-w.done:
					case <-stop:
					}
					close(sub)
				}()
				drain() // returns when the subscription's channel closes
				close(stop)
			}
			first = false
			select {
			case <-w.done:
				return
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
}

func (w *watcher) close() {
	w.once.Do(func() {
		close(w.done)
		w.wg.Wait()
	})
}
