// Package subnetenv reads and writes subnet.env, the file in which flanneld
// tells the host what it leased (COMPAT.md): Docker (through
// mk-docker-opts.sh), the flannel CNI plugin and weftd itself on its next
// start read it, so the format and the order of its lines are kept exactly.
package subnetenv

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Env is the content of subnet.env.
type Env struct {
	Network netip.Prefix // FLANNEL_NETWORK, e.g. 172.30.0.0/16; zero when IPv4 is off
	// Subnet is FLANNEL_SUBNET: the first host address of the lease with the
	// lease's prefix length, e.g. 172.30.19.1/24 (docker's --bip).
	Subnet      netip.Prefix
	IPv6Network netip.Prefix // FLANNEL_IPV6_NETWORK; zero when IPv6 is off
	IPv6Subnet  netip.Prefix // FLANNEL_IPV6_SUBNET, first host address as Subnet
	MTU         int          // FLANNEL_MTU
	IPMasq      bool         // FLANNEL_IPMASQ
}

// HostSubnet is FLANNEL_SUBNET for a lease: its first host address with its
// prefix length (172.30.19.0/24 → 172.30.19.1/24).
func HostSubnet(lease netip.Prefix) netip.Prefix {
	if !lease.IsValid() {
		return netip.Prefix{}
	}
	return netip.PrefixFrom(lease.Masked().Addr().Next(), lease.Bits())
}

// LeaseSubnet is the lease behind e.Subnet (172.30.19.1/24 → 172.30.19.0/24),
// for weftd to prefer its previous subnet. Zero when e has no IPv4 subnet.
func LeaseSubnet(e Env) netip.Prefix {
	return e.Subnet.Masked()
}

// IPv6LeaseSubnet is LeaseSubnet for the IPv6 lease.
func IPv6LeaseSubnet(e Env) netip.Prefix {
	return e.IPv6Subnet.Masked()
}

// Format renders e in flanneld's format and order: FLANNEL_NETWORK,
// FLANNEL_SUBNET (when IPv4 is on), FLANNEL_IPV6_NETWORK, FLANNEL_IPV6_SUBNET
// (when IPv6 is on), FLANNEL_MTU, FLANNEL_IPMASQ.
func Format(e Env) ([]byte, error) {
	if err := e.check(); err != nil {
		return nil, err
	}
	var b bytes.Buffer
	if e.Subnet.IsValid() {
		fmt.Fprintf(&b, "FLANNEL_NETWORK=%s\n", e.Network)
		fmt.Fprintf(&b, "FLANNEL_SUBNET=%s\n", e.Subnet)
	}
	if e.IPv6Subnet.IsValid() {
		fmt.Fprintf(&b, "FLANNEL_IPV6_NETWORK=%s\n", e.IPv6Network)
		fmt.Fprintf(&b, "FLANNEL_IPV6_SUBNET=%s\n", e.IPv6Subnet)
	}
	fmt.Fprintf(&b, "FLANNEL_MTU=%d\n", e.MTU)
	fmt.Fprintf(&b, "FLANNEL_IPMASQ=%t\n", e.IPMasq)
	return b.Bytes(), nil
}

// check refuses what would make a file other tools misread.
func (e Env) check() error {
	if !e.Subnet.IsValid() && !e.IPv6Subnet.IsValid() {
		return errors.New("subnet.env: FLANNEL_SUBNET and FLANNEL_IPV6_SUBNET both missing: at least one lease is required")
	}
	for _, f := range []struct {
		name, netName string
		sub, network  netip.Prefix
		is4           bool
	}{
		{"FLANNEL_SUBNET", "FLANNEL_NETWORK", e.Subnet, e.Network, true},
		{"FLANNEL_IPV6_SUBNET", "FLANNEL_IPV6_NETWORK", e.IPv6Subnet, e.IPv6Network, false},
	} {
		if !f.sub.IsValid() {
			if f.network.IsValid() {
				return fmt.Errorf("subnet.env: %s %s given without %s", f.netName, f.network, f.name)
			}
			continue
		}
		if f.sub.Addr().Is4() != f.is4 || f.sub.Addr().Is4In6() {
			return fmt.Errorf("subnet.env: %s %s: wrong address family", f.name, f.sub)
		}
		if f.sub.Addr() == f.sub.Masked().Addr() {
			// Docker's --bip needs a host address; the lease's network
			// address here is a caller's mistake (use HostSubnet).
			return fmt.Errorf("subnet.env: %s %s: must be the lease's first host address (%s), not its network address",
				f.name, f.sub, HostSubnet(f.sub))
		}
		if !f.network.IsValid() || f.network.Addr().Is4() != f.is4 || f.network.Masked() != f.network {
			return fmt.Errorf("subnet.env: %s %q: must be the overlay's CIDR (network address)", f.netName, f.network.String())
		}
		if !f.network.Contains(f.sub.Addr()) || f.sub.Bits() < f.network.Bits() {
			return fmt.Errorf("subnet.env: %s %s: outside %s %s", f.name, f.sub, f.netName, f.network)
		}
	}
	if e.MTU < 0 || e.MTU > 65535 {
		return fmt.Errorf("subnet.env: FLANNEL_MTU %d: must be in 0..65535", e.MTU)
	}
	return nil
}

// Write stores e at path atomically: a temporary file in the same directory,
// synced, then renamed over path, so a reader never sees half a file. The
// file has mode 0644; a missing directory is created with mode 0755.
func Write(path string, e Env) error {
	data, err := Format(e)
	if err != nil {
		return err
	}
	return WriteFileAtomic(path, data, 0o644)
}

// WriteFileAtomic writes data to path by temp file, fsync and rename, and
// syncs the directory so that the rename survives a crash.
func WriteFileAtomic(path string, data []byte, mode os.FileMode) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create directory %s: %w", dir, err)
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("create temporary file for %s: %w", path, err)
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := f.Chmod(mode); err != nil {
		return fmt.Errorf("chmod %s: %w", tmp, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("rename %s to %s: %w", tmp, path, err)
	}
	ok = true
	if d, err := os.Open(dir); err == nil {
		// Best effort: the file is in place either way.
		_ = d.Sync()
		d.Close()
	}
	return nil
}

// Read reads and parses the subnet.env at path. A missing file gives an
// error for which errors.Is(err, fs.ErrNotExist) holds.
func Read(path string) (Env, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Env{}, fmt.Errorf("read subnet file: %w", err)
	}
	e, err := Parse(data)
	if err != nil {
		return Env{}, fmt.Errorf("%s: %w", path, err)
	}
	return e, nil
}

// Var is one assignment of a shell-style env file.
type Var struct {
	Line  int // 1-based
	Name  string
	Value string
}

// ParseVars reads a shell-style env file as systemd's EnvironmentFile and
// `source` would for simple files: blank lines and # comments are skipped,
// an `export ` prefix is allowed, values may be quoted with " or '. The error
// names the line and the rule.
func ParseVars(data []byte) ([]Var, error) {
	var vars []Var
	for i, line := range strings.Split(string(data), "\n") {
		n := i + 1
		s := strings.TrimSpace(strings.TrimSuffix(line, "\r"))
		if s == "" || s[0] == '#' {
			continue
		}
		if rest, ok := strings.CutPrefix(s, "export"); ok && (strings.HasPrefix(rest, " ") || strings.HasPrefix(rest, "\t")) {
			s = strings.TrimSpace(rest)
		}
		name, value, ok := strings.Cut(s, "=")
		if !ok {
			return nil, fmt.Errorf("line %d %q: not NAME=VALUE", n, clip(line))
		}
		if !IsShellName(name) {
			return nil, fmt.Errorf("line %d %q: %q is not a variable name", n, clip(line), name)
		}
		v, err := unquote(value)
		if err != nil {
			return nil, fmt.Errorf("line %d %q: %w", n, clip(line), err)
		}
		vars = append(vars, Var{Line: n, Name: name, Value: v})
	}
	return vars, nil
}

// IsShellName reports whether s is a shell variable name: letters, digits
// and _, not starting with a digit.
func IsShellName(s string) bool {
	if s == "" {
		return false
	}
	for i, r := range s {
		if !(r == '_' || r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' || i > 0 && r >= '0' && r <= '9') {
			return false
		}
	}
	return true
}

// unquote handles a whole-value quote and a trailing comment after
// whitespace, the forms hand-edited env files use.
func unquote(v string) (string, error) {
	if v == "" {
		return "", nil
	}
	if q := v[0]; q == '"' || q == '\'' {
		end := strings.IndexByte(v[1:], q)
		if end < 0 {
			return "", fmt.Errorf("unterminated %c quote", q)
		}
		inner, rest := v[1:1+end], strings.TrimSpace(v[2+end:])
		if rest != "" && rest[0] != '#' {
			return "", fmt.Errorf("text %q after the closing quote", rest)
		}
		return inner, nil
	}
	if i := strings.IndexAny(v, " \t"); i >= 0 {
		rest := strings.TrimSpace(v[i:])
		if rest != "" && rest[0] != '#' {
			return "", fmt.Errorf("unquoted value %q contains whitespace", v)
		}
		v = v[:i]
	}
	return v, nil
}

func clip(s string) string {
	if len(s) > 80 {
		return s[:77] + "..."
	}
	return s
}

// Parse parses subnet.env. Unknown variables are ignored; a later assignment
// wins, as in the shell. At least one of FLANNEL_SUBNET and
// FLANNEL_IPV6_SUBNET is required; every value present must be well formed.
func Parse(data []byte) (Env, error) {
	vars, err := ParseVars(data)
	if err != nil {
		return Env{}, err
	}
	var e Env
	for _, v := range vars {
		bad := func(rule string) error {
			return fmt.Errorf("line %d: %s %q: %s", v.Line, v.Name, v.Value, rule)
		}
		switch v.Name {
		case "FLANNEL_NETWORK", "FLANNEL_IPV6_NETWORK":
			p, err := netip.ParsePrefix(v.Value)
			is4 := v.Name == "FLANNEL_NETWORK"
			if err != nil || p.Addr().Is4() != is4 || p.Addr().Is4In6() {
				return Env{}, bad("not an " + family(is4) + " CIDR")
			}
			if p.Masked() != p {
				return Env{}, bad("host bits set")
			}
			if is4 {
				e.Network = p
			} else {
				e.IPv6Network = p
			}
		case "FLANNEL_SUBNET", "FLANNEL_IPV6_SUBNET":
			p, err := netip.ParsePrefix(v.Value)
			is4 := v.Name == "FLANNEL_SUBNET"
			if err != nil || p.Addr().Is4() != is4 || p.Addr().Is4In6() {
				return Env{}, bad("not an " + family(is4) + " address with prefix length")
			}
			if is4 {
				e.Subnet = p
			} else {
				e.IPv6Subnet = p
			}
		case "FLANNEL_MTU":
			n, err := strconv.Atoi(v.Value)
			if err != nil || n < 0 || n > 65535 {
				return Env{}, bad("not an integer in 0..65535")
			}
			e.MTU = n
		case "FLANNEL_IPMASQ":
			switch v.Value {
			case "true":
				e.IPMasq = true
			case "false":
				e.IPMasq = false
			default:
				return Env{}, bad("must be true or false")
			}
		}
	}
	if !e.Subnet.IsValid() && !e.IPv6Subnet.IsValid() {
		return Env{}, errors.New("no FLANNEL_SUBNET (nor FLANNEL_IPV6_SUBNET)")
	}
	return e, nil
}

func family(is4 bool) string {
	if is4 {
		return "IPv4"
	}
	return "IPv6"
}
