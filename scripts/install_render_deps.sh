#!/usr/bin/env bash
# Install the system libraries MuJoCo needs to render off-screen through EGL (Mesa, no display),
# as used by offline_mbrl.evaluation.record_video with MUJOCO_GL=egl.
#
# Idempotent and quiet: does nothing when the libraries are already installed, runs apt-get
# only when some are missing and we are root. Debian/Ubuntu only; exits 1 with a one-line
# message when it cannot install what is missing.
set -euo pipefail

PACKAGES=(libegl1 libegl-mesa0 libgl1-mesa-dri libgbm1)

missing=()
if command -v dpkg-query >/dev/null 2>&1; then
  for pkg in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
      missing+=("$pkg")
    fi
  done
else
  # Not a dpkg system: settle for the shared libraries being on the loader path.
  for lib in libEGL.so.1 libgbm.so.1; do
    if ! ldconfig -p 2>/dev/null | grep -q "$lib"; then
      echo "install_render_deps.sh: $lib not found: install EGL and Mesa (libEGL, libgbm, Mesa DRI drivers) with your package manager" >&2
      exit 1
    fi
  done
  exit 0
fi

if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install_render_deps.sh: missing ${missing[*]}: run this script as root (sudo $0)" >&2
  exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_render_deps.sh: missing ${missing[*]} and no apt-get: install them with your package manager" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
