#!/usr/bin/env bash
# Builds the real components warmpool's tests run against (etcd, the
# Kubernetes control plane, the reference CNI plugins) from the Go module
# proxy, at the versions pinned by the wrapper modules beside this script.
#
# Binaries land OUTSIDE the clone, in
#   ${WARMPOOL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/warmpool}/bin/<component>-<version>-<key>/
# where <key> hashes the wrapper module's files and the Go version, so a fresh
# clone on the same machine reuses them and a changed pin rebuilds. A directory
# is only renamed into place once its build succeeded, so an interrupted build
# never leaves a half-built cache entry.
#
# Usage: build.sh [--print-dir] [component...]   (default: all)
#   --print-dir   print the cache directory of each component and build nothing
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${WARMPOOL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/warmpool}"
goversion="$(go env GOVERSION)"

# component -> "version|wrapper dir|packages to build (out=pkg ...)|ldflags"
declare -A spec=(
	[etcd]="v3.7.3|etcd|etcd=go.etcd.io/etcd/server/v3|-s -w"
	[kube]="v1.37.2|kube|kube=.|-s -w -X k8s.io/component-base/version.gitVersion=v1.37.2 -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37 -X k8s.io/component-base/version.gitTreeState=clean"
	[cniplugins]="v1.9.1|cniplugins|macvlan=github.com/containernetworking/plugins/plugins/main/macvlan host-local=github.com/containernetworking/plugins/plugins/ipam/host-local static=github.com/containernetworking/plugins/plugins/ipam/static|-s -w"
	[controller-gen]="v0.23.0|controllergen|controller-gen=sigs.k8s.io/controller-tools/cmd/controller-gen|-s -w"
)
# First-run times measured on 2 cores with an empty module and build cache.
declare -A expect=([etcd]="~2 min" [kube]="~12 min" [cniplugins]="~30 s" [controller-gen]="~1 min")

print_only=0
if [[ "${1:-}" == "--print-dir" ]]; then
	print_only=1
	shift
fi
components=("$@")
if [[ ${#components[@]} -eq 0 ]]; then
	components=(etcd kube cniplugins controller-gen)
fi

dir_of() {
	local name="$1" version wrapper key
	IFS='|' read -r version wrapper _ _ <<<"${spec[$name]}"
	key="$(cd "$here/$wrapper" && cat go.mod go.sum *.go | { cat; echo "$goversion ${spec[$name]}"; } | sha256sum | cut -c1-12)"
	echo "$cache/bin/$name-$version-$key"
}

build() {
	local name="$1" version wrapper pkgs ldflags dest tmp start
	IFS='|' read -r version wrapper pkgs ldflags <<<"${spec[$name]}"
	dest="$(dir_of "$name")"
	if [[ -f "$dest/.complete" ]]; then
		echo "warmpool: $name $version cached in $dest"
		return
	fi
	mkdir -p "$cache/bin"
	tmp="$(mktemp -d "$cache/bin/.$name-XXXXXX")"
	trap 'rm -rf "$tmp"; kill "${ticker:-0}" 2>/dev/null || true' RETURN
	start=$SECONDS
	echo "warmpool: building $name $version into $dest (first run takes ${expect[$name]} on 2 cores)"
	(
		trap 'kill "$(jobs -p)" 2>/dev/null; exit 0' TERM
		while :; do
			sleep 30 &
			wait $!
			echo "warmpool:   ... $name still building, $((SECONDS - start)) s"
		done
	) &
	ticker=$!
	local pair out pkg
	for pair in $pkgs; do
		out="${pair%%=*}"
		pkg="${pair#*=}"
		(cd "$here/$wrapper" && GOFLAGS=-mod=mod CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$tmp/$out" "$pkg")
	done
	kill "$ticker" 2>/dev/null || true
	wait "$ticker" 2>/dev/null || true
	echo "$version $goversion" >"$tmp/.complete"
	rm -rf "$dest"
	mv "$tmp" "$dest"
	echo "warmpool: built $name $version in $((SECONDS - start)) s"
}

for c in "${components[@]}"; do
	if [[ -z "${spec[$c]:-}" ]]; then
		echo "warmpool: unknown component $c (known: ${!spec[*]})" >&2
		exit 2
	fi
	if [[ $print_only -eq 1 ]]; then
		dir_of "$c"
	else
		build "$c"
	fi
done
