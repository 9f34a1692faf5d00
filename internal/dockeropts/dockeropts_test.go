package dockeropts

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite testdata/combinations.golden")

const seedEnv = "FLANNEL_NETWORK=172.30.0.0/16\nFLANNEL_SUBNET=172.30.72.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n"

func noEnv(string) (string, bool) { return "", false }

// The ops note's case, byte for byte as COMPAT.md shows it.
func TestSeedCase(t *testing.T) {
	dir := t.TempDir()
	in := filepath.Join(dir, "subnet.env")
	out := filepath.Join(dir, "run", "flannel", "docker")
	if err := os.WriteFile(in, []byte(seedEnv), 0o644); err != nil {
		t.Fatal(err)
	}
	o, err := ParseArgs([]string{"-f", in, "-k", "DOCKER_NETWORK_OPTIONS", "-d", out})
	if err != nil {
		t.Fatal(err)
	}
	if err := Run(o, noEnv); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	want := `DOCKER_OPT_BIP="--bip=172.30.72.1/24"
DOCKER_OPT_IPMASQ="--ip-masq=true"
DOCKER_OPT_MTU="--mtu=1450"
DOCKER_NETWORK_OPTIONS=" --bip=172.30.72.1/24 --ip-masq=true --mtu=1450 "
`
	if string(got) != want {
		t.Errorf("output\n got %q\nwant %q", got, want)
	}
	if fi, _ := os.Stat(out); fi.Mode().Perm() != 0o644 {
		t.Errorf("mode %v, want 0644", fi.Mode().Perm())
	}
}

func TestParseArgs(t *testing.T) {
	def := Defaults()
	both := func(o Options) Options { o.Individual, o.Combined = true, true; return o }
	tests := []struct {
		args []string
		want Options
		err  string
	}{
		{args: nil, want: both(def)},
		{args: []string{"-i"}, want: func() Options { o := def; o.Individual = true; return o }()},
		{args: []string{"-c"}, want: func() Options { o := def; o.Combined = true; return o }()},
		{args: []string{"-icm", "-kX", "-f/a", "-d", "/b"}, want: Options{SubnetFile: "/a", OutFile: "/b", Key: "X", Individual: true, Combined: true, NoIPMasq: true}},
		{args: []string{"-m", "--", "-i"}, err: `unexpected argument "-i" (options only)`},
		{args: []string{"-m", "extra"}, err: `unexpected argument "extra" (options only)`},
		{args: []string{"-x"}, err: `unknown option -x`},
		{args: []string{"-ix"}, err: `unknown option -x`},
		{args: []string{"-k"}, err: `option -k requires an argument`},
		{args: []string{"-k", "1BAD"}, err: `-k "1BAD": not a shell variable name (letters, digits, _; not starting with a digit)`},
		{args: []string{"-k=X"}, err: `-k "=X": not a shell variable name (letters, digits, _; not starting with a digit)`},
		{args: []string{"-f", ""}, err: `-f: empty path`},
		{args: []string{"-d", ""}, err: `-d: empty path`},
		{args: []string{"-h"}, err: ErrHelp.Error()},
	}
	for _, tt := range tests {
		got, err := ParseArgs(tt.args)
		if tt.err != "" {
			if err == nil || err.Error() != tt.err {
				t.Errorf("ParseArgs(%q) error = %v, want %q", tt.args, err, tt.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("ParseArgs(%q): %v", tt.args, err)
			continue
		}
		if d := cmp.Diff(tt.want, got); d != "" {
			t.Errorf("ParseArgs(%q) (-want +got):\n%s", tt.args, d)
		}
	}
}

// combination is one golden case: a subnet.env, the flags, and the inherited
// value of the combined variable.
type combination struct {
	envName, env string
	flags        []string
	inherited    *string
}

func combinations() []combination {
	envs := []struct{ name, data string }{
		{"ipmasq-false", seedEnv},
		{"ipmasq-true", strings.Replace(seedEnv, "IPMASQ=false", "IPMASQ=true", 1)},
		{"no-mtu-no-ipmasq", "FLANNEL_NETWORK=172.30.0.0/16\nFLANNEL_SUBNET=172.30.72.1/24\n"},
	}
	flagSets := [][]string{
		nil, {"-i"}, {"-c"}, {"-i", "-c"}, {"-m"}, {"-i", "-m"}, {"-c", "-m"}, {"-icm"},
		{"-k", "DOCKER_NETWORK_OPTIONS"}, {"-c", "-k", "DOCKER_NETWORK_OPTIONS"}, {"-i", "-k", "DOCKER_NETWORK_OPTIONS"},
		{"-m", "-k", "DOCKER_NETWORK_OPTIONS"},
	}
	inh := "--log-level=warn --insecure-registry=10.64.3.7:5000"
	empty := ""
	var cs []combination
	for _, e := range envs {
		for _, f := range flagSets {
			for _, in := range []*string{nil, &empty, &inh} {
				cs = append(cs, combination{e.name, e.data, f, in})
			}
		}
	}
	return cs
}

func (c combination) title() string {
	in := "unset"
	if c.inherited != nil {
		in = fmt.Sprintf("%q", *c.inherited)
	}
	return fmt.Sprintf("=== subnet.env %s | flags %q | inherited %s", c.envName, c.flags, in)
}

func (c combination) lookup(key string) func(string) (string, bool) {
	return func(name string) (string, bool) {
		if name == key && c.inherited != nil {
			return *c.inherited, true
		}
		return "", false
	}
}

// Every flag combination against testdata/combinations.golden (regenerate
// with -update and review the diff).
func TestCombinationsGolden(t *testing.T) {
	var all bytes.Buffer
	for _, c := range combinations() {
		o, err := ParseArgs(c.flags)
		if err != nil {
			t.Fatal(err)
		}
		out, err := Render(o, []byte(c.env), c.lookup(o.Key))
		if err != nil {
			t.Fatalf("%s: %v", c.title(), err)
		}
		fmt.Fprintf(&all, "%s\n%s", c.title(), out)
	}
	golden := filepath.Join("testdata", "combinations.golden")
	if *update {
		if err := os.WriteFile(golden, all.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(string(want), all.String()); d != "" {
		t.Errorf("combinations differ from %s (-want +got):\n%s", golden, d)
	}
}

// TestAgainstScript compares every combination with a copy of flannel's
// bash mk-docker-opts.sh when WEFT_REF_MK_DOCKER_OPTS names one (we do not
// ship flannel's script; this is how the golden file was checked).
func TestAgainstScript(t *testing.T) {
	script := os.Getenv("WEFT_REF_MK_DOCKER_OPTS")
	if script == "" {
		t.Skip("WEFT_REF_MK_DOCKER_OPTS not set")
	}
	dir := t.TempDir()
	for i, c := range combinations() {
		in := filepath.Join(dir, fmt.Sprintf("subnet-%d.env", i))
		if err := os.WriteFile(in, []byte(c.env), 0o644); err != nil {
			t.Fatal(err)
		}
		refOut := filepath.Join(dir, fmt.Sprintf("ref-%d", i))
		args := append([]string{script, "-f", in, "-d", refOut}, c.flags...)
		o, err := ParseArgs(append([]string{"-f", in}, c.flags...))
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("bash", args...)
		cmd.Env = []string{"PATH=" + os.Getenv("PATH")}
		if c.inherited != nil {
			cmd.Env = append(cmd.Env, o.Key+"="+*c.inherited)
		}
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s: script: %v\n%s", c.title(), err, b)
		}
		want, err := os.ReadFile(refOut)
		if err != nil {
			t.Fatal(err)
		}
		got, err := Render(o, []byte(c.env), c.lookup(o.Key))
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != string(want) {
			t.Errorf("%s\n got %q\nwant %q (script)", c.title(), got, want)
		}
	}
}

func TestErrorsLeaveOutputUntouched(t *testing.T) {
	tests := []struct {
		name, env string // env "" means: no subnet.env at all
		want      string
		notExist  bool
	}{
		{name: "missing subnet.env", notExist: true, want: "read subnet file: open "},
		{name: "no FLANNEL_SUBNET", env: "FLANNEL_NETWORK=172.30.0.0/16\nFLANNEL_MTU=1450\n", want: "no FLANNEL_SUBNET"},
		{name: "IPv6 only", env: "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00::1/64\n", want: "no FLANNEL_SUBNET: Docker's --bip needs an IPv4 subnet"},
		{name: "bad ipmasq", env: strings.Replace(seedEnv, "IPMASQ=false", "IPMASQ=yes", 1), want: `line 4: FLANNEL_IPMASQ "yes": must be true or false`},
		{name: "bad mtu", env: strings.Replace(seedEnv, "MTU=1450", "MTU=big", 1), want: `line 3: FLANNEL_MTU "big": not an integer`},
		{name: "garbage", env: "this is not an env file\n", want: `line 1 "this is not an env file": not NAME=VALUE`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			in := filepath.Join(dir, "subnet.env")
			if !tt.notExist {
				if err := os.WriteFile(in, []byte(tt.env), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			out := filepath.Join(dir, "docker")
			const old = "DOCKER_OPTS=\" --bip=10.0.0.1/24 \"\n"
			if err := os.WriteFile(out, []byte(old), 0o644); err != nil {
				t.Fatal(err)
			}
			o, _ := ParseArgs([]string{"-f", in, "-d", out})
			err := Run(o, noEnv)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Run error = %v, want it to contain %q", err, tt.want)
			}
			if tt.notExist && !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("error %v is not fs.ErrNotExist", err)
			}
			if !strings.Contains(err.Error(), in) {
				t.Errorf("error %v does not name the file %s", err, in)
			}
			if b, _ := os.ReadFile(out); string(b) != old {
				t.Errorf("output changed to %q", b)
			}
			if ents, _ := os.ReadDir(dir); len(ents) != 2-btoi(tt.notExist) {
				t.Errorf("directory holds %d entries (temp file left?)", len(ents))
			}
		})
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

func TestInheritedValueRefusedWhenUnquotable(t *testing.T) {
	o, _ := ParseArgs(nil)
	_, err := Render(o, []byte(seedEnv), func(k string) (string, bool) { return `--label a="b"`, k == "DOCKER_OPTS" })
	if err == nil || !strings.Contains(err.Error(), "environment DOCKER_OPTS") {
		t.Errorf("Render with a quote in the inherited value: %v", err)
	}
}

func BenchmarkRender(b *testing.B) {
	o, _ := ParseArgs([]string{"-k", "DOCKER_NETWORK_OPTIONS"})
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Render(o, []byte(seedEnv), noEnv); err != nil {
			b.Fatal(err)
		}
	}
}
