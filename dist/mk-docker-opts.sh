#!/bin/sh
# mk-docker-opts.sh — flannel's script of this name, for units that call it
# (ExecStartPost=/usr/libexec/flannel/mk-docker-opts.sh -k DOCKER_NETWORK_OPTIONS
# -d /run/flannel/docker). The work is done by `weftctl docker-opts`, which
# takes the same flags (-f -d -i -c -k -m) and writes the same output, but
# fails loudly when subnet.env is missing or broken.
#
# weftctl is looked for next to this script first (a release unpacked in one
# directory), then on PATH.
case $0 in
*/*) here=${0%/*} ;;
*) here= ;; # found on PATH: so will weftctl be
esac
if [ -n "$here" ] && [ -x "$here/weftctl" ]; then
	exec "$here/weftctl" docker-opts "$@"
fi
if command -v weftctl >/dev/null 2>&1; then
	exec weftctl docker-opts "$@"
fi
echo "$0: weftctl not found next to this script (${here:-none}) nor on PATH ($PATH)" >&2
exit 127
