#!/bin/sh
set -e
while [ "$1" != -o ]; do shift; done
out=$2; shift 2
mkdir -p "$(dirname "$out")"
{ echo '#!/bin/sh'; cat "$@" | sed 's/^/# /'; } > "$out"
chmod 755 "$out"
