package lab

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/weft-net/weft/internal/netconf"
)

// Row is one line of the host table, read live from subnet.env and etcd.
type Row struct {
	Host        string
	PublicIP    string // the lease's PublicIP (eth0's address with -iface=eth0)
	Subnet      string
	VtepMAC     string
	ContainerIP string
	Weftd       string // pid or "stopped"
	// Subnet6 and ContainerIP6 are the IPv6 side of a dual-stack lab ("" otherwise).
	Subnet6, ContainerIP6 string
}

// Rows builds the host table of a lab from its state, each host's current
// subnet.env and its lease in etcd.
func Rows(ctx context.Context, st State, cli *clientv3.Client) []Row {
	rows := make([]Row, 0, len(st.Hosts))
	for _, h := range st.Hosts {
		r := Row{Host: h.Name, PublicIP: "-", Subnet: "-", VtepMAC: "-", ContainerIP: "-", Weftd: "stopped"}
		if h.ContainerIP.IsValid() {
			r.ContainerIP = h.ContainerIP.String()
		}
		if h.WeftdPID > 0 && processAlive(h.WeftdPID) {
			r.Weftd = strconv.Itoa(h.WeftdPID)
		}
		env, err := ReadSubnetEnv(h.SubnetFile)
		if err != nil {
			rows = append(rows, r)
			continue
		}
		sub := env.Subnet.Masked()
		r.Subnet = sub.String()
		if env.IPv6Subnet.IsValid() {
			r.Subnet6, r.ContainerIP6 = env.IPv6Subnet.Masked().String(), "-"
			if h.ContainerIP6.IsValid() {
				r.ContainerIP6 = h.ContainerIP6.String()
			}
		}
		if cli != nil {
			pub, mac, err := leaseOf(ctx, cli, st.Prefix, sub, env.IPv6Subnet.Masked())
			switch {
			case err != nil:
				r.PublicIP = "(" + err.Error() + ")"
			default:
				r.PublicIP, r.VtepMAC = pub, mac
			}
		}
		rows = append(rows, r)
	}
	return rows
}

// LeaseKey is flannel's key of a subnet lease.
func LeaseKey(prefix string, subnet netip.Prefix) string {
	return fmt.Sprintf("%s/subnets/%s-%d", prefix, subnet.Masked().Addr(), subnet.Bits())
}

// leaseOf reads a lease; subnet6 is the IPv6 half of a dual-stack key
// (zero otherwise).
func leaseOf(ctx context.Context, cli *clientv3.Client, prefix string, subnet, subnet6 netip.Prefix) (pub, mac string, err error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	key := LeaseKey(prefix, subnet)
	if subnet6.IsValid() {
		key += fmt.Sprintf("&%s-%d", subnet6.Addr(), subnet6.Bits())
	}
	resp, err := cli.Get(ctx, key)
	if err != nil {
		return "", "", fmt.Errorf("etcd: %w", err)
	}
	if len(resp.Kvs) == 0 {
		return "no lease", "-", nil
	}
	var v struct {
		PublicIP    string
		BackendData struct{ VtepMAC string }
	}
	if err := json.Unmarshal(resp.Kvs[0].Value, &v); err != nil {
		return "bad lease", "-", nil
	}
	mac = v.BackendData.VtepMAC
	if mac == "" {
		mac = "-"
	}
	return v.PublicIP, mac, nil
}

// WriteTable prints the host table.
func WriteTable(w io.Writer, rows []Row) {
	six := false
	for _, r := range rows {
		six = six || r.Subnet6 != ""
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	if six {
		fmt.Fprintln(tw, "HOST\tPUBLIC-IP\tSUBNET\tVTEP-MAC\tCONTAINER-IP\tIPV6-SUBNET\tCONTAINER-IPV6\tWEFTD")
	} else {
		fmt.Fprintln(tw, "HOST\tPUBLIC-IP\tSUBNET\tVTEP-MAC\tCONTAINER-IP\tWEFTD")
	}
	for _, r := range rows {
		if six {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Host, r.PublicIP, r.Subnet, r.VtepMAC, r.ContainerIP, dash(r.Subnet6), dash(r.ContainerIP6), r.Weftd)
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.Host, r.PublicIP, r.Subnet, r.VtepMAC, r.ContainerIP, r.Weftd)
	}
	tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// WriteMatrix prints a ping matrix: a row per source container, a column
// per destination, ✓ with the round trip or ✗.
func WriteMatrix(w io.Writer, hosts []HostState, m [][]PingResult) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	hdr := []string{"PING FROM \\ TO"}
	for _, h := range hosts {
		hdr = append(hdr, h.Name)
	}
	fmt.Fprintln(tw, strings.Join(hdr, "\t"))
	for i, h := range hosts {
		cells := []string{h.Name}
		for j := range hosts {
			switch r := m[i][j]; {
			case i == j:
				cells = append(cells, "-")
			case r.Err == nil:
				cells = append(cells, fmt.Sprintf("✓ %.2fms", float64(r.RTT)/float64(time.Millisecond)))
			default:
				cells = append(cells, "✗")
			}
		}
		fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	tw.Flush()
}

// Report prints the host table and a fresh ping matrix of the lab recorded
// in st and returns the matrix's failures (nil when every ping passed).
func Report(ctx context.Context, w io.Writer, st State) error {
	eps := st.EtcdEndpoints
	if len(eps) == 0 {
		eps = []string{st.EtcdEndpoint}
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints: eps, DialTimeout: 3 * time.Second, Logger: zap.NewNop(),
	})
	if err != nil {
		cli = nil
	} else {
		defer cli.Close()
	}
	fmt.Fprintf(w, "lab %s: %d hosts, backend %s, etcd %s (prefix %s)\n\n", st.Name, len(st.Hosts), st.Backend, strings.Join(eps, ","), st.Prefix)
	WriteTable(w, Rows(ctx, st, cli))
	fmt.Fprintln(w)
	m := pingMatrix(ctx, st.Hosts, PingOptions{})
	WriteMatrix(w, st.Hosts, m)
	six := len(st.Hosts) > 0 && st.Hosts[0].ContainerIP6.IsValid()
	if six {
		// The IPv6 matrix counts with the IPv4 one: a pair fails if either does.
		fmt.Fprintln(w, "\nIPv6:")
		m6 := pingMatrix(ctx, st.Hosts, PingOptions{IPv6: true})
		WriteMatrix(w, st.Hosts, m6)
		for i := range m {
			for j := range m[i] {
				if i != j && m6[i][j].Err != nil && m[i][j].Err == nil {
					m[i][j].Err = m6[i][j].Err
				} else if i != j && m6[i][j].Err != nil {
					m[i][j].Err = fmt.Errorf("%w; %w", m[i][j].Err, m6[i][j].Err)
				}
			}
		}
	}
	merr := MatrixErr(m)
	if merr != nil {
		n := len(st.Hosts)
		fmt.Fprintln(w)
		failed := 0
		for i := range m {
			for j := range m[i] {
				if i != j && m[i][j].Err != nil {
					failed++
					fmt.Fprintf(w, "  ✗ %v\n", m[i][j].Err)
				}
			}
		}
		fmt.Fprintf(w, "%d of %d pings failed\n", failed, n*(n-1))
		if st.Backend == netconf.BackendAlloc {
			fmt.Fprintln(w, "(backend alloc only allocates subnets and has no data path: pings across hosts are not expected to pass)")
		}
		for _, h := range st.Hosts {
			fmt.Fprintf(w, "%s: weftd log %s ends with:\n%s\n", h.Name, h.LogFile, logTail(h.LogFile, 5))
		}
	} else {
		n := len(st.Hosts)
		if six {
			fmt.Fprintf(w, "\nall %d pings passed (IPv4 and IPv6)\n", 2*n*(n-1))
		} else {
			fmt.Fprintf(w, "\nall %d pings passed\n", n*(n-1))
		}
	}
	return merr
}
