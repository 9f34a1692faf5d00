package doctor

// The wireguard backend's check: each device's peers, read through its UAPI
// socket (what `wg show` reads), against what the leases ask of it — the
// same plan weftd's devices are given (dataplane.WireGuardPeers).

import (
	"cmp"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/weft-net/weft/internal/dataplane"
	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/netconf"
	"github.com/weft-net/weft/internal/wgengine"
)

// CheckWireGuard is the name of the WireGuard peers check, one verdict per
// device (flannel-wg, flannel-wg-v6).
const CheckWireGuard = "wireguard-peers"

// WireGuardState is one WireGuard device as its UAPI socket shows it.
type WireGuardState struct {
	Name   string
	Socket string
	Device wgengine.Device
	Err    error // the socket did not answer
}

// uapiTimeout bounds one socket's answer.
const uapiTimeout = 3 * time.Second

// maxListed bounds the peers one verdict names.
const maxListed = 5

// ObserveWireGuard reads the devices cfg's Mode makes through their UAPI
// sockets in dir ("" = $WEFT_WIREGUARD_SOCKET_DIR, else
// wgengine.DefaultSocketDir).
func ObserveWireGuard(cfg netconf.Config, dir string) []WireGuardState {
	dir = cmp.Or(dir, os.Getenv(wgengine.SocketDirEnv), wgengine.DefaultSocketDir)
	devs, err := dataplane.WireGuardPeers(cfg, dataplane.Host{}, wgengine.Key{}, lease.Snapshot{})
	if err != nil {
		return []WireGuardState{{Name: dataplane.WireGuardDeviceName, Err: err}}
	}
	out := make([]WireGuardState, 0, len(devs))
	for _, d := range devs {
		ws := WireGuardState{Name: d.Name, Socket: filepath.Join(dir, d.Name+".sock")}
		ws.Device, ws.Err = wgengine.Query(ws.Socket, uapiTimeout)
		out = append(out, ws)
	}
	return out
}

// checkWireGuard compares each device's peers with what the leases ask:
// a peer missing, one no lease asks for (stale), one whose endpoint,
// allowed IPs, pre-shared key or keepalive differ (wrong), and the
// device's listen port and key against the lease.
func checkWireGuard(s State) []Verdict {
	if !s.configOK() || s.Etcd.Config.BackendType != netconf.BackendWireGuard {
		return nil
	}
	if s.Etcd.LeasesErr != nil {
		return []Verdict{warn(CheckWireGuard, "not checked: leases unknown", "fix the lease check first")}
	}
	own, ok := s.own()
	if !ok {
		return []Verdict{warn(CheckWireGuard, "not checked: this host's lease is unknown", "fix the lease check first")}
	}
	snap := lease.Snapshot{Own: own}
	for i := range s.Etcd.Leases {
		if l := &s.Etcd.Leases[i]; l.Subnet.Masked() != own.Subnet.Masked() {
			snap.Peers = append(snap.Peers, l)
		}
	}
	slices.SortFunc(snap.Peers, lease.ComparePeers)
	host := dataplane.Host{IfaceAddr: own.Attrs.PublicIP, PublicIP: own.Attrs.PublicIP,
		IfaceAddr6: own.Attrs.PublicIPv6, PublicIP6: own.Attrs.PublicIPv6}
	var vs []Verdict
	for _, ws := range s.WireGuard {
		if ws.Err != nil {
			vs = append(vs, fail(CheckWireGuard, fmt.Sprintf("%s: %v", ws.Name, ws.Err),
				"systemctl restart weftd (it runs the device and serves its socket; WEFT_WIREGUARD_SOCKET_DIR moves the socket, doctor reads the same variable)"))
			continue
		}
		want, err := dataplane.WireGuardPeers(s.Etcd.Config, host, ws.Device.PublicKey, snap)
		if err != nil {
			vs = append(vs, fail(CheckWireGuard, fmt.Sprintf("%s: %v", ws.Name, err), "weftctl config validate"))
			continue
		}
		i := slices.IndexFunc(want, func(d dataplane.WireGuardDevice) bool { return d.Name == ws.Name })
		if i < 0 {
			continue
		}
		vs = append(vs, compareWireGuard(ws, want[i], own))
	}
	return vs
}

// compareWireGuard is one device's verdict.
func compareWireGuard(ws WireGuardState, want dataplane.WireGuardDevice, own lease.Lease) Verdict {
	var problems []string
	if ws.Device.ListenPort != want.ListenPort {
		problems = append(problems, fmt.Sprintf("listens on port %d, the config asks %d", ws.Device.ListenPort, want.ListenPort))
	}
	data := own.Attrs.BackendData
	if ws.Name == dataplane.WireGuardDeviceNameV6 {
		data = own.Attrs.BackendV6Data
	}
	if k, ok := leaseKey(data); ok && k != ws.Device.PublicKey {
		problems = append(problems, fmt.Sprintf("its public key is %s but this host's lease publishes %s: peers cannot reach it", ws.Device.PublicKey, k))
	}
	have := make(map[wgengine.Key]wgengine.PeerStatus, len(ws.Device.Peers))
	for _, p := range ws.Device.Peers {
		have[p.PublicKey] = p
	}
	var missing, wrong, stale []string
	wanted := make(map[wgengine.Key]bool, len(want.Peers))
	for _, w := range want.Peers {
		wanted[w.PublicKey] = true
		h, ok := have[w.PublicKey]
		if !ok {
			missing = append(missing, fmt.Sprintf("%s (%s at %s)", w.PublicKey, prefixes(w.AllowedIPs), w.Endpoint))
			continue
		}
		var diffs []string
		if h.Endpoint != w.Endpoint {
			diffs = append(diffs, fmt.Sprintf("endpoint %s, lease asks %s", h.Endpoint, w.Endpoint))
		}
		if prefixes(h.AllowedIPs) != prefixes(w.AllowedIPs) {
			diffs = append(diffs, fmt.Sprintf("allowed IPs %s, lease asks %s", prefixes(h.AllowedIPs), prefixes(w.AllowedIPs)))
		}
		if h.PSK != w.PSK {
			diffs = append(diffs, "pre-shared key is not the config's PSK")
		}
		if h.Keepalive != w.Keepalive {
			diffs = append(diffs, fmt.Sprintf("keepalive %s, config asks %s", h.Keepalive, w.Keepalive))
		}
		if len(diffs) > 0 {
			wrong = append(wrong, fmt.Sprintf("%s: %s", w.PublicKey, strings.Join(diffs, ", ")))
		}
	}
	for _, h := range ws.Device.Peers {
		if !wanted[h.PublicKey] {
			stale = append(stale, fmt.Sprintf("%s (%s at %s)", h.PublicKey, prefixes(h.AllowedIPs), h.Endpoint))
		}
	}
	for _, g := range []struct {
		what string
		list []string
	}{{"missing peers", missing}, {"wrong peers", wrong}, {"stale peers (no lease asks for them)", stale}} {
		if len(g.list) > 0 {
			problems = append(problems, fmt.Sprintf("%d %s: %s", len(g.list), g.what, listSome(g.list)))
		}
	}
	if len(problems) > 0 {
		return fail(CheckWireGuard, ws.Name+": "+strings.Join(problems, "; "), restartFix)
	}
	what := fmt.Sprintf("%s: %d peers, as the leases ask (listening on %d)", ws.Name, len(want.Peers), ws.Device.ListenPort)
	if len(want.Skipped) > 0 {
		what += fmt.Sprintf("; %d leases left out: %s", len(want.Skipped), listSome(want.Skipped))
	}
	return pass(CheckWireGuard, what)
}

// leaseKey is the PublicKey of a wireguard BackendData, if it has one.
func leaseKey(data []byte) (wgengine.Key, bool) {
	var d struct{ PublicKey string }
	if json.Unmarshal(data, &d) != nil {
		return wgengine.Key{}, false
	}
	k, err := wgengine.ParseKey(d.PublicKey)
	return k, err == nil
}

func prefixes[P fmt.Stringer](ps []P) string {
	ss := make([]string, len(ps))
	for i, p := range ps {
		ss[i] = p.String()
	}
	slices.Sort(ss)
	return strings.Join(ss, ",")
}

func listSome(ss []string) string {
	if len(ss) <= maxListed {
		return strings.Join(ss, "; ")
	}
	return strings.Join(ss[:maxListed], "; ") + fmt.Sprintf("; and %d more", len(ss)-maxListed)
}
