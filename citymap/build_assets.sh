#!/usr/bin/env bash
# Vendor the map's browser libraries from npm into citymap/static/vendor (no CDN at run time).
# Idempotent: does nothing when the pinned versions are already there. Needs npm (build time only).
set -euo pipefail
LEAFLET=1.9.4
UPLOT=1.6.32
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
vendor="$here/static/vendor"
stamp="$vendor/VERSIONS"
want="leaflet $LEAFLET
uplot $UPLOT"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  echo "citymap assets: present ($vendor)"; exit 0
fi
command -v npm >/dev/null || { echo "citymap assets: npm is needed to fetch leaflet and uplot" >&2; exit 1; }
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "leaflet@$LEAFLET" "uplot@$UPLOT" >/dev/null)
mkdir -p "$work/leaflet" "$work/uplot"
tar -xzf "$work/leaflet-$LEAFLET.tgz" -C "$work/leaflet"
tar -xzf "$work/uplot-$UPLOT.tgz" -C "$work/uplot"
rm -rf "$vendor"; mkdir -p "$vendor/leaflet/images" "$vendor/uplot"
cp "$work/leaflet/package/dist/leaflet.js" "$work/leaflet/package/dist/leaflet.css" "$vendor/leaflet/"
cp "$work/leaflet/package/dist/images/"*.png "$vendor/leaflet/images/"
cp "$work/leaflet/package/LICENSE" "$vendor/leaflet/LICENSE"
cp "$work/uplot/package/dist/uPlot.iife.min.js" "$work/uplot/package/dist/uPlot.min.css" "$vendor/uplot/"
cp "$work/uplot/package/LICENSE" "$vendor/uplot/LICENSE"
printf '%s\n' "$want" > "$stamp"
echo "citymap assets: leaflet $LEAFLET, uplot $UPLOT -> $vendor"
