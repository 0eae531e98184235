# The agent's image, which also carries the plugin that its init container
# (`warmpool-agent install-cni`) copies to the node: `make images`, or from
# the repository's root:
#   docker build -f manifests/images/agent.Dockerfile -t <name> .
ARG GO_VERSION=1.26
FROM golang:${GO_VERSION} AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o /out/warmpool-agent ./cmd/warmpool-agent && \
    CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o /out/warmpool ./cmd/warmpool

# Runs as root, unlike the allocator: it writes host paths that root owns
# (the socket, its record, the plugin in /opt/cni/bin). The DaemonSet
# gives it no capability and no privilege.
FROM gcr.io/distroless/static-debian12
COPY --from=build /out/warmpool-agent /warmpool-agent
COPY --from=build /out/warmpool /warmpool
USER 0:0
ENTRYPOINT ["/warmpool-agent"]
