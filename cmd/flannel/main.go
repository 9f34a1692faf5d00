// Command flannel is weft's CNI plugin for "type": "flannel", a drop-in for
// flannel's (see internal/flannelcni); install it as /opt/cni/bin/flannel.
package main

import "github.com/weft-net/weft/internal/flannelcni"

func main() { flannelcni.Main() }
