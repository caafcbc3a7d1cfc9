#!/bin/sh
# Runs `systemd-analyze verify` on the silod units. /usr/bin/silod is usually not installed where this runs,
# so each unit is checked from a temporary copy whose ExecStart binary is /bin/true; any output fails.
set -eu

src="$(cd "$(dirname "$0")/../../systemd" && pwd)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

# verify UNIT_FILE NAME: copy UNIT_FILE to $tmp/NAME (a template is verified through an instance name).
verify() {
  sed 's|^ExecStart=/usr/bin/silod|ExecStart=/bin/true|' "$1" > "$tmp/$2"
  if ! out="$(systemd-analyze verify --man=no "$tmp/$2" 2>&1)" || [ -n "$out" ]; then
    echo "systemd-analyze verify $2 failed:" >&2
    echo "$out" >&2
    exit 1
  fi
}

verify "$src/silod.service" silod.service
verify "$src/silod@.service" silod@a.service

echo "systemd units: ok"
