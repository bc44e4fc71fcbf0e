#!/bin/sh
# A stand-in for `go build`: "compiles" every .go file into one script named by -o.
set -e
out=app
while [ $# -gt 0 ]; do
  case "$1" in
    -o) out=$2; shift 2 ;;
    -ldflags) ldflags=$2; shift 2 ;;
    *) shift ;;
  esac
done
mkdir -p "$(dirname "$out")"
{
  echo '#!/bin/sh'
  echo "# built from: $(ls *.go | tr '\n' ' ')"
  echo "# ldflags: ${ldflags:-none}"
  cat *.go | sed 's/^/# /'
} > "$out"
chmod 755 "$out"
