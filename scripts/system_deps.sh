#!/usr/bin/env bash
# System packages napari's Qt 6 (PySide6, xcb platform plugin) needs to run under Xvfb (GUI tests, `make demo` with a window),
# plus python3-venv for `make`'s virtual environment. Used by `make test`, `make demo` and .ci/run.
#
#   scripts/system_deps.sh                  install what is missing when allowed (root, or sudo
#                                           without a password), else print ONE line with the
#                                           command to run; exits 0 either way
#   scripts/system_deps.sh --strict         (CI) as above, but exit 1 if anything is still missing
#   scripts/system_deps.sh --print-command  print only the install command for what is missing
#                                           (nothing when all is there); installs nothing
#
# A package counts as present when the file it provides is found (the shared library through
# ldconfig, or the program on PATH), so renamed packages (Ubuntu's *t64) and other distributions
# are judged by what the software needs, not by package names.
set -uo pipefail

mode="${1:-install}"
case "$mode" in install | --install) mode=install ;; --strict) ;; --print-command) ;;
  *) echo "usage: $0 [--strict | --print-command]" >&2; exit 2 ;; esac

[ "$(uname -s)" = "Linux" ] || exit 0  # macOS / Windows: Qt brings its own platform plugins

# Debian package -> what it provides (lib:<soname> or bin:<program>)
DEPS="
xvfb:bin:Xvfb
xauth:bin:xauth
libxcb-icccm4:lib:libxcb-icccm.so.4
libxcb-keysyms1:lib:libxcb-keysyms.so.1
libxcb-xinerama0:lib:libxcb-xinerama.so.0
libxcb-image0:lib:libxcb-image.so.0
libxcb-render-util0:lib:libxcb-render-util.so.0
libxcb-shape0:lib:libxcb-shape.so.0
libxcb-randr0:lib:libxcb-randr.so.0
libxcb-xfixes0:lib:libxcb-xfixes.so.0
libxcb-xkb1:lib:libxcb-xkb.so.1
libxcb-cursor0:lib:libxcb-cursor.so.0
libxkbcommon-x11-0:lib:libxkbcommon-x11.so.0
libxkbcommon0:lib:libxkbcommon.so.0
libxcb-util1:lib:libxcb-util.so.1
libxcb-sync1:lib:libxcb-sync.so.1
libxcb-shm0:lib:libxcb-shm.so.0
libxcb-render0:lib:libxcb-render.so.0
libxcb-glx0:lib:libxcb-glx.so.0
libx11-xcb1:lib:libX11-xcb.so.1
libgl1:lib:libGL.so.1
libegl1:lib:libEGL.so.1
libglib2.0-0:lib:libglib-2.0.so.0
libdbus-1-3:lib:libdbus-1.so.3
libfontconfig1:lib:libfontconfig.so.1
"

ldconfig_bin="$(command -v ldconfig || true)"
[ -n "$ldconfig_bin" ] || for c in /sbin/ldconfig /usr/sbin/ldconfig; do [ -x "$c" ] && ldconfig_bin="$c"; done
libs="$( { [ -n "$ldconfig_bin" ] && "$ldconfig_bin" -p 2>/dev/null; } || true)"

missing_list() {
  local entry pkg kind what
  for entry in $DEPS; do
    pkg="${entry%%:*}"; kind="${entry#*:}"; what="${kind#*:}"; kind="${kind%%:*}"
    if [ "$kind" = bin ]; then
      command -v "$what" >/dev/null 2>&1 || echo "$pkg"
    elif ! grep -qF "$what " <<<"$libs"; then
      echo "$pkg"
    fi
  done
  # `python3 -m venv` needs ensurepip, a separate package on Debian/Ubuntu
  if command -v python3 >/dev/null 2>&1 && ! python3 -c "import ensurepip, venv" >/dev/null 2>&1; then
    echo python3-venv
  fi
}

missing="$(missing_list | tr '\n' ' ' | sed 's/ *$//')"
[ -z "$missing" ] && exit 0

if command -v apt-get >/dev/null 2>&1; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo "
  hint="${sudo}apt-get update && ${sudo}apt-get install -y --no-install-recommends $missing"
else
  hint="install Xvfb, xauth, libGL/libEGL, glib, dbus, fontconfig and the xcb/xkbcommon-x11 libraries with your package manager (Debian names: $missing)"
fi

if [ "$mode" = --print-command ]; then
  echo "$hint"
  exit 0
fi

runner=""
if command -v apt-get >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    runner="env"
  elif command -v sudo >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1; then
    runner="sudo -n env"
  fi
fi

if [ -n "$runner" ]; then
  echo "system_deps: installing $missing"
  if $runner DEBIAN_FRONTEND=noninteractive apt-get update -qq </dev/null >/dev/null &&
    $runner DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing </dev/null >/dev/null; then
    libs="$( { [ -n "$ldconfig_bin" ] && "$ldconfig_bin" -p 2>/dev/null; } || true)"
    missing="$(missing_list | tr '\n' ' ' | sed 's/ *$//')"
    [ -z "$missing" ] && exit 0
  fi
  echo "system_deps: could not install all system packages (still missing: $missing); the GUI tests will be skipped." >&2
else
  echo "system_deps: GUI tests need system packages that are missing ($missing); install them with: $hint" >&2
fi
[ "$mode" = --strict ] && exit 1
exit 0
