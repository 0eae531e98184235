#!/usr/bin/env bash
# Builds the real components warmpool's tests run against (etcd, the
# Kubernetes control plane, the reference CNI plugins, controller-gen) from
# the Go module proxy, at the versions pinned by the wrapper modules beside
# this script.
#
# Binaries land OUTSIDE the clone, in
#   ${WARMPOOL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/warmpool}/bin/<component>-<version>-<key>/
# where <key> hashes the wrapper module's files and the build flags, so a
# fresh clone on the same machine reuses them and a changed pin rebuilds.
# A build goes to a temporary directory that is renamed into place only once
# it succeeded, under a lock, so an interrupted or concurrent build never
# leaves a half-built or clobbered entry. Entries of a component with another
# key are pruned after a successful build.
#
# Usage: build.sh [--print-dir] [component...|node]
#   (default: what make test needs; node: what a real node adds)
#   --print-dir   print the cache directory of each component and build nothing
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${WARMPOOL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/warmpool}"

# component -> "version|wrapper dir|binaries to build (out=pkg ...)|ldflags[|cgo build tags]"
# A fifth field builds with cgo and those tags (runc links libseccomp, from
# Debian's libseccomp-dev); the others are static, CGO_ENABLED=0.
declare -A spec=(
	[etcd]="v3.7.3|etcd|etcd=go.etcd.io/etcd/server/v3|-s -w"
	[kube]="v1.37.2|kube|kube=.|-s -w -X k8s.io/component-base/version.gitVersion=v1.37.2 -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37 -X k8s.io/component-base/version.gitTreeState=clean"
	[cniplugins]="v1.9.1|cniplugins|macvlan=github.com/containernetworking/plugins/plugins/main/macvlan host-local=github.com/containernetworking/plugins/plugins/ipam/host-local static=github.com/containernetworking/plugins/plugins/ipam/static bridge=github.com/containernetworking/plugins/plugins/main/bridge loopback=github.com/containernetworking/plugins/plugins/main/loopback portmap=github.com/containernetworking/plugins/plugins/meta/portmap|-s -w"
	[controller-gen]="v0.23.0|controllergen|controller-gen=sigs.k8s.io/controller-tools/cmd/controller-gen|-s -w"
	# A real node's (make test-node): the container runtime, its OCI
	# runtime, cluster DNS and the Multus meta-plugin; kubelet, kube-proxy
	# and kubectl are in kube.
	[containerd]="v2.4.2|containerd|containerd=github.com/containerd/containerd/v2/cmd/containerd containerd-shim-runc-v2=github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 ctr=github.com/containerd/containerd/v2/cmd/ctr|-s -w -X github.com/containerd/containerd/v2/version.Version=v2.4.2 -X github.com/containerd/containerd/v2/version.Package=github.com/containerd/containerd/v2"
	[runc]="v1.5.3|runc|runc=github.com/opencontainers/runc|-s -w -X main.version=1.5.3|seccomp urfave_cli_no_docs"
	[coredns]="v1.15.0|coredns|coredns=.|-s -w"
	[multus]="v4.1.0|multus|multus=gopkg.in/k8snetworkplumbingwg/multus-cni.v4/cmd/multus|-s -w"
)
# First-run times measured on 2 cores with an empty module and build cache.
declare -A expect=([etcd]="~1-2 min" [kube]="~6-12 min" [cniplugins]="~30 s" [controller-gen]="~1 min" [containerd]="~7 min" [runc]="~3 min" [coredns]="~6 min" [multus]="~2 min")

print_only=0
if [[ "${1:-}" == "--print-dir" ]]; then
	print_only=1
	shift
fi
components=("$@")
if [[ ${#components[@]} -eq 0 ]]; then
	components=(etcd kube cniplugins controller-gen)
elif [[ "${components[*]}" == "node" ]]; then
	components=(kube cniplugins containerd runc coredns multus)
fi

dir_of() {
	local name="$1" version wrapper key
	IFS='|' read -r version wrapper _ _ <<<"${spec[$name]}"
	key="$(cd "$here/$wrapper" && cat go.mod go.sum ./*.go | { cat; echo "${spec[$name]}"; } | sha256sum | cut -c1-12)"
	echo "$cache/bin/$name-$version-$key"
}

# Whatever happens (a failed go build under set -e, Ctrl-C, a kill), the
# progress ticker stops and the temporary directory goes.
ticker=""
tmp=""
cleanup() {
	if [[ -n "$ticker" ]]; then
		kill "$ticker" 2>/dev/null || true
		wait "$ticker" 2>/dev/null || true
		ticker=""
	fi
	if [[ -n "$tmp" ]]; then
		rm -rf "$tmp"
		tmp=""
	fi
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM

build() {
	local name="$1" version wrapper pkgs ldflags tags dest start
	IFS='|' read -r version wrapper pkgs ldflags tags <<<"${spec[$name]}"
	dest="$(dir_of "$name")"
	if [[ -f "$dest/.complete" ]]; then
		echo "warmpool: $name $version cached in $dest"
		return
	fi
	mkdir -p "$cache/bin"
	# One builder at a time per cache: a second one waits, then finds the
	# entry built.
	exec {lock}>"$cache/bin/.lock"
	if ! flock -n "$lock"; then
		echo "warmpool: waiting for another build in $cache/bin"
		flock "$lock"
	fi
	if [[ -f "$dest/.complete" ]]; then
		echo "warmpool: $name $version cached in $dest"
		exec {lock}>&-
		return
	fi
	if [[ " $tags " == *" seccomp "* ]] && ! pkg-config --exists libseccomp 2>/dev/null; then
		echo "warmpool: $name links libseccomp: install Debian's libseccomp-dev and pkg-config (apt-get install libseccomp-dev pkg-config)" >&2
		exit 1
	fi
	tmp="$(mktemp -d "$cache/bin/.$name-XXXXXX")"
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
		# -mod=readonly: the committed go.mod/go.sum are the pin; a build
		# must never rewrite them.
		if [[ -n "$tags" ]]; then
			(cd "$here/$wrapper" && GOFLAGS=-mod=readonly CGO_ENABLED=1 go build -trimpath -tags "$tags" -ldflags "$ldflags" -o "$tmp/$out" "$pkg")
		else
			(cd "$here/$wrapper" && GOFLAGS=-mod=readonly CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$tmp/$out" "$pkg")
		fi
	done
	echo "$version $(go env GOVERSION)" >"$tmp/.complete"
	rm -rf "$dest" # an incomplete leftover of an older script, if any
	mv -T "$tmp" "$dest"
	tmp=""
	cleanup
	# Older builds of this component are dead weight once this one exists.
	local old
	for old in "$cache/bin/$name-"*; do
		[[ "$old" == "$dest" || ! -d "$old" ]] || rm -rf "$old"
	done
	exec {lock}>&-
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
