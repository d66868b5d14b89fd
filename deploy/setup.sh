#!/usr/bin/env bash
# Installs what sparsekv needs from Debian 12 packages (only what is missing), then configures
# and builds it in ./build. Idempotent: run it as often as you like.
#   deploy/setup.sh            install + build
#   deploy/setup.sh --no-build install only
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
  build-essential cmake ninja-build pkg-config git
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler libabsl-dev
  libfabric-dev libibverbs-dev librdmacm-dev libnuma-dev libtomlplusplus-dev
  libmicrohttpd-dev libsystemd-dev libxxhash-dev systemd dpkg-dev curl
  clang libclang-rt-14-dev
  catch2 redis-server openssl etcd-server
  python3 python3-numpy python3-pytest python3-torch gnuplot-nox
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "setup: all Debian packages present"
fi

[ "${1:-}" = "--no-build" ] && exit 0

BUILD_DIR="${BUILD_DIR:-build}"
cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE="${BUILD_TYPE:-RelWithDebInfo}" \
  -DCMAKE_INSTALL_PREFIX=/usr >/dev/null
cmake --build "$BUILD_DIR" -j"$(nproc)"
echo "setup: built in $BUILD_DIR"
