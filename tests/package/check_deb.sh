#!/usr/bin/env bash
# Builds the .deb with cpack and checks what it holds.
set -euo pipefail
BUILD_DIR="$1"
PREFIX="$2"
OUT="$BUILD_DIR/package_check"
rm -rf "$OUT"
mkdir -p "$OUT"
cpack --config "$BUILD_DIR/CPackConfig.cmake" -G DEB -B "$OUT" >"$OUT/cpack.log" 2>&1 || { cat "$OUT/cpack.log"; exit 1; }
DEB="$(ls "$OUT"/*.deb)"
echo "built $DEB"
dpkg-deb -c "$DEB" | awk '{print $6}' | sed 's#^\./#/#' > "$OUT/contents"
want=(
  "$PREFIX/bin/sparsekvd"
  "$PREFIX/bin/sparsekvctl"
  "$PREFIX/include/sparsekv/client.h"
  "$PREFIX/include/sparsekv/region.h"
  "$PREFIX/lib/systemd/system/sparsekvd.service"
  "$PREFIX/lib/sysusers.d/sparsekv.conf"
  "$PREFIX/lib/tmpfiles.d/sparsekv.conf"
  "/etc/sparsekv/sparsekvd.toml"
)
[ "$PREFIX" = "/usr" ] || want[7]="$PREFIX/etc/sparsekv/sparsekvd.toml"
fail=0
for f in "${want[@]}"; do
  grep -qx "$f" "$OUT/contents" || { echo "missing from the package: $f"; fail=1; }
done
grep -q "/libsparsekv\.so\." "$OUT/contents" || { echo "missing: libsparsekv.so.*"; fail=1; }
grep -q "/sparsekv/libsparsekv-rma\.so$" "$OUT/contents" || { echo "missing: the RMA plugin sparsekv/libsparsekv-rma.so"; fail=1; }
grep -q "/python3/dist-packages/sparsekv/__init__\.py$" "$OUT/contents" || { echo "missing: the Python package"; fail=1; }
grep -q "/cmake/sparsekv/sparsekvConfig\.cmake$" "$OUT/contents" || { echo "missing: sparsekvConfig.cmake"; fail=1; }
grep -q "/cmake/sparsekv/sparsekvTargets\.cmake$" "$OUT/contents" || { echo "missing: sparsekvTargets.cmake"; fail=1; }
if grep -q '\.pb\.h$' "$OUT/contents"; then echo "generated protobuf headers leaked into the package"; fail=1; fi
depends="$(dpkg-deb -f "$DEB" Depends)"
echo "Depends: $depends"
for lib in libgrpc libprotobuf libnuma; do
  echo "$depends" | grep -q "$lib" || { echo "Depends lacks $lib"; fail=1; }
done
dpkg-deb -e "$DEB" "$OUT/control"
[ -x "$OUT/control/postinst" ] || { echo "no postinst"; fail=1; }
grep -qx "/etc/sparsekv/sparsekvd.toml" "$OUT/control/conffiles" || { echo "config is not a conffile"; fail=1; }
unit="$(dpkg-deb --fsys-tarfile "$DEB" | tar -xO ".$PREFIX/lib/systemd/system/sparsekvd.service")"
echo "$unit" | grep -q "^ExecStart=$PREFIX/bin/sparsekvd " || { echo "unit ExecStart does not point at $PREFIX/bin"; fail=1; }
echo "$unit" | grep -q "^Type=notify" || { echo "unit is not Type=notify"; fail=1; }
[ $fail -eq 0 ] && echo "package OK: $(wc -l < "$OUT/contents") entries"
exit $fail
