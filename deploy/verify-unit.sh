#!/usr/bin/env bash
# Checks the systemd unit with `systemd-analyze verify`, as installed into a scratch root:
# verify wants ExecStart's binary to exist, so the unit is checked where install.sh put it.
#   deploy/verify-unit.sh [ROOT]   # ROOT made by `install.sh --root ROOT`; else one is made
# systemd 252's verify reports a misspelt key or a bad value yet exits 0, so any output at
# all fails the check. Without systemd-analyze the check is skipped, not failed.
set -euo pipefail

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if ! command -v systemd-analyze >/dev/null 2>&1; then
  echo "verify-unit: systemd-analyze is not installed; the unit is not verified (skipped)"
  exit 0
fi

root=${1:-}
if [ -z "$root" ]; then
  root=$(mktemp -d)
  trap 'rm -rf "$root"' EXIT
  "$SRC/deploy/install.sh" --root "$root" >/dev/null
fi
# Under --root, the unit's default dependencies (sysinit.target, ...) are looked up in the
# root too: give it this machine's.
if [ ! -d "$root/usr/lib/systemd/system" ]; then
  mkdir -p "$root/usr/lib/systemd"
  cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/"
fi

rc=0
out=$(systemd-analyze --root="$root" verify /etc/systemd/system/curtaild.service 2>&1) || rc=$?
if [ "$rc" != 0 ] || [ -n "$out" ]; then
  printf '%s\n' "$out" >&2
  echo "verify-unit: curtaild.service fails systemd-analyze verify (exit $rc)" >&2
  exit 1
fi
echo "verify-unit: curtaild.service passes systemd-analyze verify ($(systemd-analyze --version | head -1))"
