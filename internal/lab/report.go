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
)

// Row is one line of the host table, read live from subnet.env and etcd.
type Row struct {
	Host        string
	PublicIP    string // the lease's PublicIP (eth0's address with -iface=eth0)
	Subnet      string
	VtepMAC     string
	ContainerIP string
	Weftd       string // pid or "stopped"
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
		if cli != nil {
			pub, mac, err := leaseOf(ctx, cli, st.Prefix, sub)
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

func leaseOf(ctx context.Context, cli *clientv3.Client, prefix string, subnet netip.Prefix) (pub, mac string, err error) {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	resp, err := cli.Get(ctx, LeaseKey(prefix, subnet))
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
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "HOST\tPUBLIC-IP\tSUBNET\tVTEP-MAC\tCONTAINER-IP\tWEFTD")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.Host, r.PublicIP, r.Subnet, r.VtepMAC, r.ContainerIP, r.Weftd)
	}
	tw.Flush()
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
		if st.Backend == "alloc" {
			fmt.Fprintln(w, "(backend alloc only allocates subnets and has no data path: pings across hosts are not expected to pass)")
		}
		for _, h := range st.Hosts {
			fmt.Fprintf(w, "%s: weftd log %s ends with:\n%s\n", h.Name, h.LogFile, logTail(h.LogFile, 5))
		}
	} else {
		n := len(st.Hosts)
		fmt.Fprintf(w, "\nall %d pings passed\n", n*(n-1))
	}
	return merr
}
