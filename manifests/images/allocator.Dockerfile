# The allocator's image: `make images`, or from the repository's root:
#   docker build -f manifests/images/allocator.Dockerfile -t <name> .
ARG GO_VERSION=1.26
FROM golang:${GO_VERSION} AS build
WORKDIR /src
# Modules first, so that a change of source reuses the download layer.
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# Static (no libc in distroless/static) and without the builder's paths.
RUN CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o /out/warmpool-allocator ./cmd/warmpool-allocator

# Nothing but the binary, CA certificates and a nonroot user (65532, the
# uid the Deployment names).
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/warmpool-allocator /warmpool-allocator
USER 65532:65532
ENTRYPOINT ["/warmpool-allocator"]
