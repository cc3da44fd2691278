#!/usr/bin/env bash
# Put a real Prometheus (and promtool) in DIR/bin without root, for the drill and its tests:
# `apt-get download` fetches the distribution's package (Debian, Ubuntu) as a plain file, and
# dpkg-deb unpacks the two binaries from it. Nothing is installed system-wide.
#
#   lab/scripts/fetch_prometheus.sh DIR
#
# Elsewhere (macOS, other distributions), install Prometheus with your package manager and put it
# on PATH, or point PEAKGUARD_PROMETHEUS at the binary.
set -euo pipefail

dest="${1:?usage: fetch_prometheus.sh DIR}"
if [[ -x "$dest/bin/prometheus" && -x "$dest/bin/promtool" ]]; then
  echo "prometheus already in $dest/bin"
  exit 0
fi
for tool in apt-get dpkg-deb; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "fetch_prometheus: no $tool here (not Debian or Ubuntu): install Prometheus with your package" \
      "manager and put it on PATH, or set PEAKGUARD_PROMETHEUS to the binary" >&2
    exit 1
  fi
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download prometheus >/dev/null 2>"$work/apt.log") || {
  echo "fetch_prometheus: apt-get download prometheus failed:" >&2
  cat "$work/apt.log" >&2
  echo "(an empty package list? run apt-get update, as root, once)" >&2
  exit 1
}
dpkg-deb -x "$work"/prometheus_*.deb "$work/root"
mkdir -p "$dest/bin"
install -m 0755 "$work/root/usr/bin/prometheus" "$work/root/usr/bin/promtool" "$dest/bin/"
"$dest/bin/prometheus" --version 2>&1 | head -1
