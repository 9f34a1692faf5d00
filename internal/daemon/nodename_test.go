package daemon

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/flagenv"
)

func TestResolveNodeName(t *testing.T) {
	dir := t.TempDir()
	old := MachineIDFile
	t.Cleanup(func() { MachineIDFile = old })

	MachineIDFile = filepath.Join(dir, "machine-id")
	if err := os.WriteFile(MachineIDFile, []byte("4c4c4544004e35108052b4c04f384d32\n"), 0o444); err != nil {
		t.Fatal(err)
	}
	if n, from, err := ResolveNodeName(""); err != nil || n != "4c4c4544004e35108052b4c04f384d32" || from != MachineIDFile {
		t.Errorf("from machine-id: %q %q %v", n, from, err)
	}
	if n, from, err := ResolveNodeName("node-7"); err != nil || n != "node-7" || from != "-node-name" {
		t.Errorf("from the flag: %q %q %v", n, from, err)
	}
	if _, _, err := ResolveNodeName("bad name"); err == nil {
		t.Errorf("a node name with a space was accepted")
	}
	MachineIDFile = filepath.Join(dir, "absent")
	host, _ := os.Hostname()
	if n, from, err := ResolveNodeName(""); err != nil || n != host || from != "hostname" {
		t.Errorf("no machine-id: %q %q %v, want the hostname %q", n, from, err, host)
	}
}

func TestSubnetLeaseTTLFlag(t *testing.T) {
	for _, tc := range []struct {
		args []string
		env  map[string]string
		want time.Duration
		err  string
	}{
		{args: nil, want: 24 * time.Hour},
		{args: []string{"-subnet-lease-ttl=2h"}, want: 2 * time.Hour},
		{env: map[string]string{"FLANNELD_SUBNET_LEASE_TTL": "90m"}, want: 90 * time.Minute},
		{args: []string{"-subnet-lease-ttl=30s"}, err: "-subnet-lease-ttl 30s: must be whole seconds between 1m0s and 8760h0m0s"},
		{args: []string{"-subnet-lease-ttl=1m500ms"}, err: "must be whole seconds"},
		{args: []string{"-node-name=a b"}, err: "-node-name: node name"},
	} {
		var o Options
		fs := o.NewFlagSet(&strings.Builder{})
		if err := fs.Parse(append(tc.args, "-etcd-endpoints=http://127.0.0.1:2379")); err != nil {
			t.Fatal(err)
		}
		if err := flagenv.Apply(fs, EnvPrefix, func(k string) (string, bool) { v, ok := tc.env[k]; return v, ok }); err != nil {
			t.Fatal(err)
		}
		err := o.Validate()
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%v %v: err %v, want %q", tc.args, tc.env, err, tc.err)
			}
			continue
		}
		if err != nil || o.SubnetLeaseTTL != tc.want {
			t.Errorf("%v %v: TTL %s, err %v; want %s", tc.args, tc.env, o.SubnetLeaseTTL, err, tc.want)
		}
	}
}
