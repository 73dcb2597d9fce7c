#!/bin/sh
# Stop the agent before its files go: it leaves Consul gracefully.
set -e
if [ -d /run/systemd/system ]; then
	systemctl stop raptiformica.service || true
	systemctl disable raptiformica.service || true
fi
