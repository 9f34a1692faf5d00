// Package dataplane turns lease snapshots into kernel state.
//
// # The shape
//
// Three layers, each in its own files:
//
//   - What the kernel should hold: a backend's spec (desired.go) is a pure
//     function from (host, lease snapshot, config, a few kernel facts) to a
//     Desired per address family — the device's address, routes, neighbours,
//     FDB entries — and the peers it leaves out, with why. Render is the
//     exported form of it; `weftctl doctor` and the tests use it, so there is
//     one definition of what a lease means in the kernel. Table tests of a
//     spec need no kernel.
//   - Making the kernel hold it: one driver (driver.go) per family of a
//     backend diffs a Desired against the kernel and writes the differences
//     through internal/rtnl's batched socket — a full pass reads the kernel
//     (kernel.go, neigh.go), a delta writes the difference to the last
//     successful apply and reads nothing (diff.go). The same code programs
//     every backend, IPv4 and IPv6.
//   - When: one reconcile loop (loop.go) owns the only goroutine that changes
//     the kernel; lease snapshots, kernel events (watch.go), the retry and
//     the resync timers only mark it dirty.
//
// Peers that cannot be programmed are skipped, logged once and counted
// (problems.go); routes of other owners are left alone (owner.go).
//
// # Adding a backend
//
// A backend is a netconf option type, one desired-state file here, and one
// line in the kinds table (backend.go). Take udp.go (a userspace engine on
// a TUN) or vxlan.go (a kernel device) as the model:
//
//  1. In internal/netconf: the backend's name constant and its options
//     (decoding, defaults, validation, the config checks of `weftctl config
//     validate`).
//  2. In <backend>.go here:
//     - <backend>Specs(cfg, host) []spec: one spec per address family, pure.
//     A spec names the device (or "" for routes out of the underlay), says
//     what the host's own subnet is, whether the device holds the subnet's
//     address, the static routes (udp: the Network through the device) and
//     what one peer lease asks for (PeerEntries: a route, and for an
//     overlay that resolves neighbours itself, the neighbour and FDB entry),
//     or why it cannot be programmed.
//     - setup<Backend>(b, specs): on the resolved host, make the devices (a
//     type implementing device: ensure it exists and matches, its index and
//     link), add one driver per spec with b.add, and return what the lease
//     publishes (BackendType, BackendData) and the MTU containers must use.
//     Peers that are not kernel objects (a userspace engine's peer table,
//     WireGuard peers) are set by the driver's before hook, which runs after
//     the desired state is computed and before any route that sends the
//     engine traffic is written.
//  3. One line in kinds (backend.go): name → {specs, setup, dual}.
//
// Then: a table test of the spec's Desired for a few snapshots (no kernel),
// a test of the backend in a network namespace (helpers_test.go has the
// lab), and the lab's ping matrix (`weftctl lab run --backend <name>`).
package dataplane
