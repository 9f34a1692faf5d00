// Package flagenv fills flags that were not given on the command line from
// FLANNELD_<NAME> environment variables, as flanneld does, so that the
// /etc/sysconfig/flanneld of the ops note keeps working unchanged.
package flagenv

import (
	"flag"
	"fmt"
	"strings"
)

// EnvName returns the variable that feeds flag name: FLANNELD_ETCD_ENDPOINTS
// for etcd-endpoints.
func EnvName(prefix, name string) string {
	return prefix + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// Apply sets every flag of fs that was not set on the command line from
// lookup(EnvName(prefix, name)); empty values are ignored. A repeatable flag
// takes a comma-separated list from the environment. It must run after
// fs.Parse. The error names the variable, its value and the flag's rule.
func Apply(fs *flag.FlagSet, prefix string, lookup func(string) (string, bool)) error {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if err != nil || set[f.Name] {
			return
		}
		env := EnvName(prefix, f.Name)
		v, ok := lookup(env)
		if !ok || v == "" {
			return
		}
		values := []string{v}
		if _, repeatable := f.Value.(*Strings); repeatable {
			values = strings.Split(v, ",")
		}
		for _, x := range values {
			if e := fs.Set(f.Name, strings.TrimSpace(x)); e != nil {
				err = fmt.Errorf("environment %s=%q: %w", env, v, e)
				return
			}
		}
	})
	return err
}

// Strings is a repeatable string flag: -iface eth0 -iface eth1.
type Strings []string

func (s *Strings) String() string { return strings.Join(*s, ",") }

// Set appends one value.
func (s *Strings) Set(v string) error {
	*s = append(*s, v)
	return nil
}
