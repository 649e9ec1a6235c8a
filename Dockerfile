# syntax=docker/dockerfile:1
#
# keybroker container image: a static binary on distroless "static", run as
# the image's non-root user. The runtime image has no shell, no package
# manager and no libc; the health check is the binary itself.
#
#   docker build -t keybroker:latest --build-arg VERSION=$(git describe --tags --always) .
#   docker run --rm keybroker:latest kek generate
#
# The default image (the last stage) has every KEK provider but PKCS#11,
# which needs cgo and a libc to load the HSM vendor's module. The target
# "pkcs11" is the image with it, on Debian slim, to which the vendor's
# module is added (docs/providers.md#the-container-image):
#
#   docker build --target pkcs11 -t keybroker:pkcs11 .

ARG GO_VERSION=1.26
# The Debian release of the PKCS#11 image and of its build stage (the same,
# so the binary finds the C library it was linked against).
ARG DEBIAN_RELEASE=bookworm

FROM golang:${GO_VERSION} AS build
WORKDIR /src
# Modules first, so a source change does not download them again.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG VERSION=dev
# CGO_ENABLED=0: a static binary (the SQLite store is pure Go), so the
# runtime image needs no libc.
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=linux go build -trimpath -buildvcs=false \
      -ldflags "-s -w -X main.version=${VERSION}" \
      -o /out/keybroker ./cmd/keybroker

# The PKCS#11 build: cgo on, linked dynamically against glibc.
FROM golang:${GO_VERSION}-${DEBIAN_RELEASE} AS build-pkcs11
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG VERSION=dev
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=1 GOOS=linux go build -trimpath -buildvcs=false \
      -ldflags "-s -w -X main.version=${VERSION}" \
      -o /out/keybroker ./cmd/keybroker

# keybroker:pkcs11 — Debian slim, so that an HSM vendor's module and the
# libraries it needs can be installed on top (FROM keybroker:pkcs11, USER
# root, apt-get install or COPY the module, USER 65532:65532), or mounted.
# CA certificates for the JWKS and the cloud KMS endpoints, as distroless
# has them.
FROM debian:${DEBIAN_RELEASE}-slim AS pkcs11
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build-pkcs11 /out/keybroker /usr/local/bin/keybroker
USER 65532:65532
ENV KEYBROKER_ENV=production
EXPOSE 3001
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/keybroker", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/keybroker"]
CMD ["serve"]

# The default image: the last stage, built without --target.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/keybroker /usr/local/bin/keybroker
# 65532 is distroless's "nonroot"; numeric, so a runAsNonRoot check can see it.
USER 65532:65532
ENV KEYBROKER_ENV=production
EXPOSE 3001
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/keybroker", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/keybroker"]
CMD ["serve"]
