#!/usr/bin/env bash
# Refreshes the console's one third-party file set, uPlot (the charts), from the npm
# registry: the files are committed, so neither the build nor the server fetches
# anything. Run it only to move to another version.
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=${1:-1.6.32}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack "uplot@$VERSION" --silent >/dev/null && tar xzf "uplot-$VERSION.tgz")
dest=crates/sluice-server/console/vendor
cp "$tmp/package/dist/uPlot.iife.min.js" "$tmp/package/dist/uPlot.min.css" "$dest/"
cp "$tmp/package/LICENSE" "$dest/uPlot.LICENSE"
echo "uPlot $VERSION vendored into $dest"
