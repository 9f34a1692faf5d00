package flannelcni

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// PluginsVersion is the release of containernetworking/plugins that
// scripts/install-deps.sh builds into the cache (flannel's CNI plugin pins
// the same); Debian 12's package is 1.1.1, which speaks CNI up to 1.0.0 only.
const PluginsVersion = "v1.9.1"

// DelegateDirs lists, best first, the directories that may hold the
// reference plugins the flannel plugin delegates to (bridge, host-local):
// $WEFT_CNI_PLUGINS, the cache install-deps fills
// (${WEFT_CACHE:-/var/cache/weft}/cni-plugins-<PluginsVersion>), Debian's
// /usr/lib/cni and the usual /opt/cni/bin.
func DelegateDirs() []string {
	var dirs []string
	if d := os.Getenv("WEFT_CNI_PLUGINS"); d != "" {
		dirs = append(dirs, d)
	}
	cache := os.Getenv("WEFT_CACHE")
	if cache == "" {
		cache = "/var/cache/weft"
	}
	return append(dirs, filepath.Join(cache, "cni-plugins-"+PluginsVersion), "/usr/lib/cni", "/opt/cni/bin")
}

// DelegateDir is the first of DelegateDirs with bridge and host-local.
func DelegateDir() (string, error) {
	dirs := DelegateDirs()
	for _, d := range dirs {
		if isExec(filepath.Join(d, "bridge")) && isExec(filepath.Join(d, "host-local")) {
			return d, nil
		}
	}
	return "", fmt.Errorf("no CNI bridge and host-local plugins in %s: install them with scripts/install-deps.sh (or apt-get install containernetworking-plugins)",
		strings.Join(dirs, ", "))
}

func isExec(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0
}
