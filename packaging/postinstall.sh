#!/bin/sh
# The unit is installed but not enabled: the agent needs its node config
# (/etc/raptiformica/agent.json) first, which `raptiformica adopt` writes or
# the operator does by hand (see /usr/share/doc/raptiformica/examples).
set -e
if [ -d /run/systemd/system ]; then
	systemctl daemon-reload || true
fi
