package daemon

import (
	"fmt"
	"os"
	"strings"

	"github.com/weft-net/weft/internal/lease"
)

// MachineIDFile is systemd's stable host identity, the default -node-name.
var MachineIDFile = "/etc/machine-id"

// ResolveNodeName returns this host's identity: the -node-name value when
// given, else /etc/machine-id (stable across reboots and re-addressing,
// unique per installation; a cloned VM image must have it regenerated, as
// systemd asks), else the hostname. from says which, for the log.
func ResolveNodeName(flagValue string) (name, from string, err error) {
	if flagValue != "" {
		return flagValue, "-node-name", lease.CheckNodeName(flagValue)
	}
	if b, err := os.ReadFile(MachineIDFile); err == nil {
		id := strings.TrimSpace(string(b))
		if id != "" && id != "uninitialized" {
			if err := lease.CheckNodeName(id); err != nil {
				return "", "", fmt.Errorf("%s: %w; give -node-name", MachineIDFile, err)
			}
			return id, MachineIDFile, nil
		}
	}
	h, err := os.Hostname()
	if err != nil {
		return "", "", fmt.Errorf("no -node-name, no usable %s and no hostname (%v): give -node-name", MachineIDFile, err)
	}
	if err := lease.CheckNodeName(h); err != nil {
		return "", "", fmt.Errorf("hostname as node name (no usable %s): %w; give -node-name", MachineIDFile, err)
	}
	return h, "hostname", nil
}
