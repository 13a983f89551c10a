#!/usr/bin/env bash
# Print the Debian archive this machine's apt is configured with (for debootstrap in
# deploy/build-image.sh), so no mirror address lives in the repository:
#
#   deploy/debian-mirror.sh [SUITE] [APT_DIR]     # defaults: bookworm, /etc/apt
#
# It reads deb822 sources (sources.list.d/*.sources) first, then one-line ones
# (sources.list, sources.list.d/*.list), and prints the first URI that serves SUITE
# with the main component; security and other suites' archives are skipped. Exits 1
# with a message when none does (set DEBIAN_MIRROR then).
set -euo pipefail
SUITE=${1:-bookworm}
APT_DIR=${2:-/etc/apt}

deb822() {
  # One stanza per blank-line-separated block: Types, URIs, Suites, Components.
  awk -v suite="$SUITE" '
    function check() {
      if (types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " suite " ") &&
          (" " components " ") ~ / main /) { split(uris, u, " "); print u[1]; found = 1; exit }
      types = uris = suites = components = ""
    }
    /^[ \t]*$/ { check(); next }
    /^[ \t]*#/ { next }
    tolower($1) == "types:" { $1 = ""; types = $0 }
    tolower($1) == "uris:" { $1 = ""; uris = $0 }
    tolower($1) == "suites:" { $1 = ""; suites = $0 }
    tolower($1) == "components:" { $1 = ""; components = $0 }
    END { if (!found) check() }
  ' "$@"
}

one_line() {
  # deb [options] URI SUITE COMPONENT...
  awk -v suite="$SUITE" '
    $1 == "deb" {
      i = 2
      if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
      uri = $i; s = $(i + 1)
      for (j = i + 2; j <= NF; j++) if ($j == "main" && s == suite) { print uri; exit }
    }
  ' "$@"
}

shopt -s nullglob
for file in "$APT_DIR"/sources.list.d/*.sources; do
  found=$(deb822 "$file")
  if [ -n "$found" ]; then echo "${found%/}"; exit 0; fi
done
for file in "$APT_DIR"/sources.list "$APT_DIR"/sources.list.d/*.list; do
  [ -f "$file" ] || continue
  found=$(one_line "$file")
  if [ -n "$found" ]; then echo "${found%/}"; exit 0; fi
done
echo "no Debian archive for $SUITE (main) in $APT_DIR's sources; set DEBIAN_MIRROR" >&2
exit 1
