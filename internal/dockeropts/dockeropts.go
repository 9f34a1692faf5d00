// Package dockeropts is mk-docker-opts.sh: it turns subnet.env into the
// environment file Docker's unit reads (EnvironmentFile=-/run/flannel/docker
// in the ops note), with the script's flags and byte-for-byte output.
//
// The output follows the script shipped with the flannel packages the ops
// note uses: individual DOCKER_OPT_* lines in name order (BIP, IPMASQ, MTU),
// then the combined variable, whose value is the inherited value of that
// variable, a space, and every option followed by a space:
//
//	DOCKER_NETWORK_OPTIONS=" --bip=172.30.72.1/24 --ip-masq=true --mtu=1450 "
//
// Where the script failed silently (no subnet.env, no FLANNEL_SUBNET) we fail
// loudly and leave the output file untouched. We also refuse (CheckRoutes)
// when the kernel already routes the subnet somewhere other than the local
// bridge: Docker would start, and its containers would be unreachable.
package dockeropts

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/vishvananda/netlink"

	"github.com/weft-net/weft/internal/subnetenv"
)

// Options are mk-docker-opts.sh's flags.
type Options struct {
	SubnetFile string // -f, default /run/flannel/subnet.env
	OutFile    string // -d, default /run/docker_opts.env
	Individual bool   // -i: DOCKER_OPT_BIP, DOCKER_OPT_IPMASQ, DOCKER_OPT_MTU
	Combined   bool   // -c: one variable named Key
	Key        string // -k, default DOCKER_OPTS
	NoIPMasq   bool   // -m: leave out --ip-masq

	// Routes is the netlink handle the docker0 conflict guard reads routes
	// through (see CheckRoutes); nil reads the current network namespace.
	Routes *netlink.Handle
}

// Defaults are the script's defaults.
func Defaults() Options {
	return Options{SubnetFile: "/run/flannel/subnet.env", OutFile: "/run/docker_opts.env", Key: "DOCKER_OPTS"}
}

// Usage is the help text, with the script's wording.
const Usage = `usage: mk-docker-opts.sh [-f FLANNEL-ENV-FILE] [-d DOCKER-ENV-FILE] [-i] [-c] [-m] [-k COMBINED-KEY]

Generate Docker daemon options based on flannel env file
OPTIONS:
	-f	Path to flannel env file. Defaults to /run/flannel/subnet.env
	-d	Path to Docker env file to write to. Defaults to /run/docker_opts.env
	-i	Output each Docker option as individual var. e.g. DOCKER_OPT_MTU=1500
	-c	Output combined Docker options into DOCKER_OPTS var
	-k	Set the combined options key to this value (default DOCKER_OPTS=)
	-m	Do not output --ip-masq (useful for older Docker version)
`

// ErrHelp is returned by ParseArgs for -h.
var ErrHelp = errors.New("help requested")

// ParseArgs reads the command line as the script's getopts "f:d:icmk:" does:
// letters may be grouped (-ic), an option's value may be attached (-kNAME)
// or the next argument, and "--" ends the options. Unlike the script, stray
// arguments are refused rather than ignored.
func ParseArgs(args []string) (Options, error) {
	o := Defaults()
	i := 0
	for ; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			i++
			break
		}
		if a == "--help" {
			return o, ErrHelp
		}
		if len(a) < 2 || a[0] != '-' {
			break
		}
		for j := 1; j < len(a); j++ {
			c := a[j]
			switch c {
			case 'i':
				o.Individual = true
			case 'c':
				o.Combined = true
			case 'm':
				o.NoIPMasq = true
			case 'h':
				return o, ErrHelp
			case 'f', 'd', 'k':
				v := a[j+1:]
				if v == "" {
					if i+1 >= len(args) {
						return o, fmt.Errorf("option -%c requires an argument", c)
					}
					i++
					v = args[i]
				}
				switch c {
				case 'f':
					o.SubnetFile = v
				case 'd':
					o.OutFile = v
				case 'k':
					o.Key = v
				}
				j = len(a)
			default:
				return o, fmt.Errorf("unknown option -%c", c)
			}
		}
	}
	if i < len(args) {
		return o, fmt.Errorf("unexpected argument %q (options only)", args[i])
	}
	if !o.Individual && !o.Combined {
		o.Individual, o.Combined = true, true
	}
	switch {
	case o.SubnetFile == "":
		return o, errors.New("-f: empty path")
	case o.OutFile == "":
		return o, errors.New("-d: empty path")
	case !subnetenv.IsShellName(o.Key):
		return o, fmt.Errorf("-k %q: not a shell variable name (letters, digits, _; not starting with a digit)", o.Key)
	}
	return o, nil
}

// Render produces the Docker environment file from the content of
// subnet.env. lookupEnv supplies the inherited value of the combined
// variable (os.LookupEnv in production).
func Render(o Options, subnetEnv []byte, lookupEnv func(string) (string, bool)) ([]byte, error) {
	// Parse first: it refuses a malformed file, and FLANNEL_IPMASQ other
	// than true/false, with the line and the rule.
	if _, err := subnetenv.Parse(subnetEnv); err != nil {
		return nil, err
	}
	vars, err := subnetenv.ParseVars(subnetEnv)
	if err != nil {
		return nil, err
	}
	val := map[string]string{}
	for _, v := range vars {
		val[v.Name] = v.Value // a later assignment wins, as with `source`
	}
	subnet, ok := val["FLANNEL_SUBNET"]
	if !ok {
		return nil, errors.New("no FLANNEL_SUBNET: Docker's --bip needs an IPv4 subnet")
	}

	// In name order, as the script lists its DOCKER_OPT_ variables.
	type opt struct{ name, value string }
	opts := []opt{{"DOCKER_OPT_BIP", "--bip=" + subnet}}
	if m, ok := val["FLANNEL_IPMASQ"]; ok && !o.NoIPMasq {
		// Inverted: when flannel masquerades, Docker must not as well.
		inv := map[string]string{"true": "false", "false": "true"}[m]
		opts = append(opts, opt{"DOCKER_OPT_IPMASQ", "--ip-masq=" + inv})
	}
	if mtu, ok := val["FLANNEL_MTU"]; ok {
		opts = append(opts, opt{"DOCKER_OPT_MTU", "--mtu=" + mtu})
	}

	var b bytes.Buffer
	combined, _ := lookupEnv(o.Key)
	combined += " "
	if err := quoteSafe("environment "+o.Key, combined); err != nil {
		return nil, err
	}
	for _, x := range opts {
		if err := quoteSafe(x.name, x.value); err != nil {
			return nil, err
		}
		if o.Individual {
			fmt.Fprintf(&b, "%s=\"%s\"\n", x.name, x.value)
		}
		combined += x.value + " "
	}
	if o.Combined {
		fmt.Fprintf(&b, "%s=\"%s\"\n", o.Key, combined)
	}
	return b.Bytes(), nil
}

// Run reads o.SubnetFile and writes o.OutFile: a regular file atomically
// (mode 0644), a symlink or a device in place (see writeOut). On any error
// before the write the output file is left as it was.
func Run(o Options, lookupEnv func(string) (string, bool)) error {
	data, err := os.ReadFile(o.SubnetFile)
	if err != nil {
		return fmt.Errorf("read subnet file: %w", err)
	}
	out, err := Render(o, data, lookupEnv)
	if err != nil {
		return fmt.Errorf("%s: %w", o.SubnetFile, err)
	}
	// Render has validated data, so Parse succeeds here.
	if e, err := subnetenv.Parse(data); err == nil && e.Subnet.IsValid() {
		if err := CheckRoutes(o.Routes, e.Subnet); err != nil {
			return fmt.Errorf("%s: %w; %s left unchanged", o.SubnetFile, err, o.OutFile)
		}
	}
	if err := writeOut(o.OutFile, out); err != nil {
		return fmt.Errorf("write Docker options: %w", err)
	}
	return nil
}

// quoteSafe reports whether s can sit inside the double quotes of an env
// file unchanged. The script writes values unescaped; rather than escape
// (and differ byte-wise) or write a file Docker's unit misreads, we refuse.
func quoteSafe(name, s string) error {
	if strings.ContainsAny(s, "\"\\\n\r") {
		return fmt.Errorf("%s %q: contains a double quote, backslash or newline, which the env file cannot hold unescaped", name, s)
	}
	return nil
}
