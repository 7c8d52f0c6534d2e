#!/usr/bin/env bash
# Installs curtaild on a Debian box from the source tree this script lives in:
#   the system user and group `curtaild`, a virtualenv in /opt/curtaild/venv holding this
#   project (versions from constraints.txt), /etc/curtaild with the example config (never
#   overwriting an operator's), and the systemd unit. Running it again changes only what
#   differs, and says when nothing did.
#
#   sudo deploy/install.sh [--python PYTHON]
#   deploy/install.sh --root DIR     # into a scratch root: every path under DIR, no
#                                    # useradd, no systemctl, chown only as root
set -euo pipefail

usage() {
  sed -n '2,10s/^# \{0,1\}//p' "$0"
}

SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROOT=${CURTAILD_ROOT:-}
PYTHON=
while [ $# -gt 0 ]; do
  case $1 in
    --root) ROOT=${2:?--root needs a directory}; shift 2 ;;
    --root=*) ROOT=${1#--root=}; shift ;;
    --python) PYTHON=${2:?--python needs an interpreter}; shift 2 ;;
    --python=*) PYTHON=${1#--python=}; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "install.sh: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done

if [ -n "$ROOT" ]; then
  ROOT=$(realpath -m -- "$ROOT")
  [ "$ROOT" = / ] && ROOT=
fi
SCRATCH=$([ -n "$ROOT" ] && echo yes || echo no)
AS_ROOT=$([ "$(id -u)" = 0 ] && echo yes || echo no)
if [ "$SCRATCH" = no ] && [ "$AS_ROOT" = no ]; then
  echo "install.sh: run as root (or with --root DIR for a scratch root)" >&2
  exit 1
fi
# The daemon's user reads the virtualenv: whatever root's umask, it must be world-readable.
umask 022

USER_NAME=curtaild
HOME_DIR=/var/lib/curtaild
VENV=$ROOT/opt/curtaild/venv
ETC=$ROOT/etc/curtaild
UNIT=$ROOT/etc/systemd/system/curtaild.service
STAMP=$VENV/.curtaild-install

CHANGES=0
changed() { CHANGES=$((CHANGES + 1)); echo "  changed: $*"; }
kept() { echo "  ok:      $*"; }

# ---- Python 3.11 with venv (Debian: python3-venv) -----------------------------------------
if [ -z "$PYTHON" ]; then
  PYTHON=$(command -v python3.11 || command -v python3 || true)
fi
if [ -z "$PYTHON" ] || ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "install.sh: curtaild needs Python 3.11 (apt-get install python3); or pass --python" >&2
  exit 1
fi
if ! "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null; then
  echo "install.sh: $PYTHON cannot create virtualenvs: apt-get install python3-venv" >&2
  exit 1
fi

echo "curtaild install from $SRC${ROOT:+ into scratch root $ROOT}"

# ---- the system user and group --------------------------------------------------------------
# A scratch root gets its entries in its own passwd and group files: nothing outside it.
free_id() {  # the highest unused system id (below 1000, as useradd --system picks) in $1
  awk -F: '{ used[$3] = 1 } END { for (id = 999; id > 100; id--) if (!(id in used)) { print id; exit } }' "$1"
}
if [ "$SCRATCH" = yes ]; then
  mkdir -p "$ROOT/etc"
  touch "$ROOT/etc/group" "$ROOT/etc/passwd"
  if grep -q "^$USER_NAME:" "$ROOT/etc/group"; then
    kept "group $USER_NAME"
  else
    echo "$USER_NAME:x:$(free_id "$ROOT/etc/group"):" >>"$ROOT/etc/group"
    changed "group $USER_NAME (in $ROOT/etc/group)"
  fi
  GID=$(awk -F: -v name="$USER_NAME" '$1 == name { print $3 }' "$ROOT/etc/group")
  if grep -q "^$USER_NAME:" "$ROOT/etc/passwd"; then
    kept "user $USER_NAME"
  else
    echo "$USER_NAME:x:$(free_id "$ROOT/etc/passwd"):$GID:curtaild controller:$HOME_DIR:/usr/sbin/nologin" \
      >>"$ROOT/etc/passwd"
    changed "user $USER_NAME (in $ROOT/etc/passwd)"
  fi
else
  if getent group "$USER_NAME" >/dev/null; then
    kept "group $USER_NAME"
  else
    groupadd --system "$USER_NAME"
    changed "group $USER_NAME"
  fi
  if getent passwd "$USER_NAME" >/dev/null; then
    kept "user $USER_NAME"
  else
    # systemd creates the home (StateDirectory=) and hands it to the user at each start.
    useradd --system --gid "$USER_NAME" --home-dir "$HOME_DIR" --no-create-home \
      --shell /usr/sbin/nologin --comment "curtaild controller" "$USER_NAME"
    changed "user $USER_NAME"
  fi
  GID=$(getent group "$USER_NAME" | cut -d: -f3)
fi

# root:curtaild, by number: in a scratch root the name is unknown to this machine.
own() {
  if [ "$AS_ROOT" = yes ]; then chown "0:$GID" "$@"; fi
}

# ---- the virtualenv ---------------------------------------------------------------------
# The project's files as pip builds them; their hash (with the interpreter's version) says
# whether the installed virtualenv is this source tree's.
project_files() {
  # config/: the register maps and demo farms the wheel ships (pyproject's data-files).
  (cd "$SRC" && find pyproject.toml constraints.txt README.md controller drivers sim demo config -type f \
    ! -path '*/__pycache__/*' ! -name '*.py[co]' | LC_ALL=C sort)
}
want=$({
  "$PYTHON" -VV
  project_files | (cd "$SRC" && xargs -d '\n' sha256sum)
} | sha256sum | cut -d' ' -f1)

if [ "$(cat "$STAMP" 2>/dev/null || true)" = "$want" ] \
  && "$VENV/bin/curtaild" --help >/dev/null 2>&1; then
  kept "virtualenv /opt/curtaild/venv (this source tree)"
else
  # A fresh virtualenv each time: no package a previous version needed is left behind. It
  # is built in place (a virtualenv cannot be moved), so restart the service afterwards.
  build=$(mktemp -d)
  trap 'rm -rf "$build"' EXIT
  # Build from a clean copy: setuptools' build/ in the tree can carry deleted modules along.
  project_files | (cd "$SRC" && tar -cf - -T -) | tar -xf - -C "$build"
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
    -c "$SRC/constraints.txt" "$build"
  "$VENV/bin/curtaild" --help >/dev/null
  echo "$want" >"$STAMP"
  changed "virtualenv /opt/curtaild/venv ($("$VENV/bin/python" -m pip show curtaild | sed -n 's/^Version: //p'))"
fi

# ---- /etc/curtaild: readable by the daemon, written only by root ------------------------
for dir in "$ETC" "$ETC/keys"; do
  if [ -d "$dir" ]; then
    kept "${dir#"$ROOT"}/"
  else
    install -d -m 0750 "$dir"
    own "$dir"
    changed "${dir#"$ROOT"}/ (0750 root:$USER_NAME)"
  fi
done

# The operator's config is theirs: copied from the example only when there is none.
if [ -e "$ETC/site.yaml" ]; then
  kept "/etc/curtaild/site.yaml (left as it is)"
else
  install -m 0640 "$SRC/config/site.example.yaml" "$ETC/site.yaml"
  own "$ETC/site.yaml"
  changed "/etc/curtaild/site.yaml from config/site.example.yaml (0640 root:$USER_NAME)"
fi

# Secrets the config names as {env: ...}; systemd reads this as root, so root's alone.
if [ -e "$ETC/curtaild.env" ]; then
  kept "/etc/curtaild/curtaild.env (left as it is)"
else
  cat >"$ETC/curtaild.env" <<'ENV'
# Environment for curtaild (systemd's EnvironmentFile=): secrets the config names as
# {env: NAME}, and CURTAILD_<SECTION>__<KEY> overrides. One NAME=value a line.
# CURTAILD_KEY_AGGREGATOR=
# CURTAILD_MQTT_PASSWORD=
ENV
  chmod 0600 "$ETC/curtaild.env"
  changed "/etc/curtaild/curtaild.env (0600 root)"
fi

# ---- the systemd unit -----------------------------------------------------------------------
if cmp -s "$SRC/deploy/curtaild.service" "$UNIT"; then
  kept "/etc/systemd/system/curtaild.service"
else
  install -D -m 0644 "$SRC/deploy/curtaild.service" "$UNIT"
  changed "/etc/systemd/system/curtaild.service"
  if [ "$SCRATCH" = yes ]; then
    :  # a scratch root's units are no business of this machine's systemd
  elif [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    changed "systemctl daemon-reload"
  else
    echo "  note:    systemd is not running here; no daemon-reload"
  fi
fi

# ---- done -----------------------------------------------------------------------------------
if [ "$CHANGES" = 0 ]; then
  echo "nothing changed (curtaild is installed as this source tree has it)"
else
  echo "$CHANGES change(s) made"
fi
cat <<'NEXT'

Next steps:
  1. Edit /etc/curtaild/site.yaml for this site (addresses, limits, signal sources).
  2. Put the HMAC keys it names under /etc/curtaild/keys (chmod 0640, chgrp curtaild) and
     {env: ...} secrets in /etc/curtaild/curtaild.env.
  3. (set -a; . /etc/curtaild/curtaild.env; set +a
      /opt/curtaild/venv/bin/curtaild check-config -c /etc/curtaild/site.yaml)
  4. systemctl enable --now curtaild     (after an upgrade: systemctl restart curtaild)
  5. systemctl status curtaild; journalctl -u curtaild -o cat | jq
NEXT
