# warmpool: the two set-up commands are `make demo` and `make test`.
SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c

GO ?= go
TOOLCHAIN := internal/rig/toolchain/build.sh
CONTROLLER_GEN = $$(bash $(TOOLCHAIN) --print-dir controller-gen)/controller-gen
# Test flags; e.g. make test GOTESTFLAGS='-run TestPoolValidation -v'.
GOTESTFLAGS ?=

.PHONY: all bins build generate verify-generated lint test test-faults test-node fuzz demo images docker-images clean

all: build

## bins: build the real components the tests run against (etcd, the
## Kubernetes control plane, the reference CNI plugins, controller-gen) into
## $${WARMPOOL_CACHE:-$${XDG_CACHE_HOME:-~/.cache}/warmpool}/bin, once per
## pinned version.
bins:
	bash $(TOOLCHAIN)

## build: build warmpool's binaries into ./bin, as the images ship them
## (internal/rig/gobuild): static, so the plugin a runtime execs per ADD
## needs no dynamic loader.
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags='-s -w' -o bin/ ./cmd/...

## generate: regenerate deepcopy functions and CRD manifests from api/.
generate:
	bash $(TOOLCHAIN) controller-gen
	$(CONTROLLER_GEN) object paths=./api/...
	$(CONTROLLER_GEN) crd paths=./api/... output:crd:artifacts:config=manifests/crds

## verify-generated: fail if the committed generated files differ from what
## `make generate` writes from api/ (it leaves the regenerated files in place).
verify-generated:
	@snap="$$(mktemp -d)"; trap 'rm -rf "$$snap"' EXIT; \
	cp api/v1alpha1/zz_generated.deepcopy.go "$$snap/"; cp -r manifests/crds "$$snap/crds"; \
	$(MAKE) --no-print-directory generate >/dev/null; \
	if ! diff -u "$$snap/zz_generated.deepcopy.go" api/v1alpha1/zz_generated.deepcopy.go || \
	   ! diff -ru "$$snap/crds" manifests/crds; then \
		echo "generated files were out of date: make generate has now rewritten them; commit the result"; exit 1; \
	fi

## lint: gofmt and go vet.
lint:
	@out="$$(gofmt -l .)"; \
	if [[ -n "$$out" ]]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

## test: the whole suite against real components, with the race detector,
## then every fuzzer for a few seconds beyond its committed corpus, then
## warmpool on a real node (test-node). The timeout is per package binary,
## sized for a loaded machine: the e2e package took 19.6 min beside two
## busy loops and the fault suite.
test: bins lint verify-generated
	$(GO) test -race -count=1 -timeout 45m $(GOTESTFLAGS) ./...
	$(MAKE) --no-print-directory fuzz FUZZTIME=5s
	$(MAKE) --no-print-directory test-node

## fuzz: run every fuzzer for FUZZTIME (default 60 s) each, one after the
## other; a finding is written to the package's testdata/fuzz and fails.
## A run that fails without writing an input is Go 1.26's coordinator
## racing its own -fuzztime deadline (golang/go#75804, "context deadline
## exceeded"): it is run once more, and fails only if that fails too.
FUZZTIME ?= 60s
FUZZERS := ./cni:FuzzParseConfig ./cni:FuzzParseArgs ./agent/wire:FuzzParseInvocation ./agent/wire:FuzzParseAnswer \
	./broker:FuzzDecode ./broker:FuzzSplitAttachment ./allocator:FuzzEnumerate \
	./api/v1alpha1:FuzzNodeLeaseName ./api/v1alpha1:FuzzSelectPool \
	./internal/inspect:FuzzParseState ./internal/inspect:FuzzParseMetrics ./internal/inspect:FuzzParseNetworkStatus \
	./perf:FuzzParseShape
fuzz:
	@for f in $(FUZZERS); do \
		echo "fuzz $${f%%:*} $${f##*:} for $(FUZZTIME)"; \
		corpus="$${f%%:*}/testdata/fuzz/$${f##*:}"; before="$$(ls "$$corpus" 2>/dev/null || true)"; \
		$(GO) test "$${f%%:*}" -run XXX -fuzz "^$${f##*:}$$" -fuzztime $(FUZZTIME) -parallel 1 >/tmp/warmpool-fuzz.log 2>&1 || \
		if [[ "$$(ls "$$corpus" 2>/dev/null || true)" == "$$before" ]] && grep -q "context deadline exceeded" /tmp/warmpool-fuzz.log; then \
			echo "fuzz $${f##*:}: ended by the fuzzing engine's deadline race with no input written; once more"; \
			$(GO) test "$${f%%:*}" -run XXX -fuzz "^$${f##*:}$$" -fuzztime $(FUZZTIME) -parallel 1 >/tmp/warmpool-fuzz.log 2>&1 || { cat /tmp/warmpool-fuzz.log; exit 1; }; \
		else cat /tmp/warmpool-fuzz.log; exit 1; fi; \
	done

## test-faults: the fault suite (docs/invariants.md): FAULTS seeded
## scenarios (default 100) of 30 s of pod churn with faults each, on the real
## components; make test runs the 6 regression seeds. E.g. make test-faults FAULTS=10
## FAULTSEED=200.
FAULTS ?= 100
FAULTSEED ?= 1
test-faults: bins
	$(GO) test -count=1 -timeout 0 ./internal/rig/faults -run 'TestFaults$$' -v \
		-faults.scenarios=$(FAULTS) -faults.seed=$(FAULTSEED) $(GOTESTFLAGS)

## test-node: the tests on a real node (internal/rig/node): kubelet,
## containerd, runc, kube-proxy, CoreDNS and Multus on this machine, built
## into the binary cache like the other components. They change the
## machine's network and host paths while they run, and undo it.
test-node: bins
	bash $(TOOLCHAIN) node
	$(GO) test -count=1 -timeout 30m ./internal/rig/node -node -v $(GOTESTFLAGS)

## demo: the benchmark (docs/benchmark.md): a local cluster (etcd,
## kube-apiserver, controller-manager, scheduler), embedded NATS, warmpool's
## allocator and agents, simulated kubelets running the real CNI chain;
## warmpool and the static and host-local baselines. By default 300 pods
## in each shape (about 7 min on 2 cores); DEMOFLAGS replaces that
## default, so make demo DEMOFLAGS='--runs 3' runs the full 1000-pod
## scenario three times (about 73 min). Prints the table and ratios;
## writes JSON and plots to perf-results/. Needs root (network namespaces).
DEMOFLAGS ?= --pods 300
demo: bins build
	./bin/warmpool-perf bench --bin-dir bin $(DEMOFLAGS)

## images: build the allocator and agent images from ./bin without docker
## (manifests/images), as tarballs in bin/images that docker, podman and
## containerd load (docker load -i, ctr -n k8s.io images import) and crane
## pushes, named as manifests/deploy/base/kustomization.yaml names them
## (manifests/deploy_test.go checks that the two agree).
IMAGE_REPO ?= ghcr.io/warmpool
IMAGE_TAG ?= v0.1.0
images: build
	$(GO) run ./manifests/images/build --bin-dir bin --repo $(IMAGE_REPO) --tag $(IMAGE_TAG) --out bin/images

## docker-images: the same images built by docker from the Dockerfiles in
## manifests/images, on distroless.
DOCKER ?= docker
docker-images:
	$(DOCKER) build -f manifests/images/allocator.Dockerfile -t $(IMAGE_REPO)/warmpool-allocator:$(IMAGE_TAG) .
	$(DOCKER) build -f manifests/images/agent.Dockerfile -t $(IMAGE_REPO)/warmpool-agent:$(IMAGE_TAG) .

clean:
	rm -rf bin
