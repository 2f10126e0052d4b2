#!/bin/sh
# Regenerates the go_tables seeds (see docs/fuzzing.md): builds client.go with Debian's
# golang-go (offline, standard library only), then reduce.go cuts its .gopclntab down to the
# crypto/tls functions the catalog probes and main.main (real names, code and _func records)
# in the four table layouts, and copies its .go.buildinfo.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$here/client.go" "$work/"
printf 'module seed\n\ngo 1.18\n' > "$work/go.mod"
cd "$work"
export GOFLAGS=-mod=mod GOPROXY=off CGO_ENABLED=0 GOCACHE="$work/cache"
go build -trimpath -ldflags='-s -w' -o client .
mkdir reduce
cp "$here/reduce.go" reduce/main.go
go run ./reduce ./client "$here"
ls -l "$here"
