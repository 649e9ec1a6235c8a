# syntax=docker/dockerfile:1
#
# keybroker container image: a static binary on distroless "static", run as
# the image's non-root user. The runtime image has no shell, no package
# manager and no libc; the health check is the binary itself.
#
# One platform, for the local engine:
#
#   docker build -t keybroker:dev --build-arg VERSION=$(make -s version) \
#     --build-arg COMMIT=$(git rev-parse HEAD) .
#
# A multi-arch image (linux/amd64 and linux/arm64): the build stage runs on
# the builder's own platform and cross-compiles for each target (no
# emulation), the runtime stage is the target platform's distroless image.
#
#   docker buildx build --platform linux/amd64,linux/arm64 \
#     --build-arg VERSION=$(make -s version) --build-arg COMMIT=$(git rev-parse HEAD) \
#     -t registry.example.com/keybroker:$(make -s version) --push .
#
#   docker run --rm keybroker:dev kek generate
#
# The go build flags are those of `make release` (internal/cmd/release
# checks that they agree), so the binary in the image is the release
# binary of its platform when the golang image has the same Go release.
#
# The default image (the last stage) has every KEK provider but PKCS#11,
# which needs cgo and a libc to load the HSM vendor's module. The target
# "pkcs11" is the image with it, on Debian slim, to which the vendor's
# module is added (docs/providers.md#the-container-image); it is built for
# the engine's own platform:
#
#   docker build --target pkcs11 -t keybroker:pkcs11 --build-arg VERSION=$(make -s version) .

ARG GO_VERSION=1.26
# The Debian release of the PKCS#11 image and of its build stage (the same,
# so the binary finds the C library it was linked against).
ARG DEBIAN_RELEASE=bookworm

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS build
WORKDIR /src
# Modules first, so a source change does not download them again.
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG VERSION=dev
ARG COMMIT=
# Set by buildx for each platform of --platform (and by docker build for
# the engine's own).
ARG TARGETOS
ARG TARGETARCH
# CGO_ENABLED=0: a static binary (the SQLite store is pure Go), so the
# runtime image needs no libc, and cross-compiling needs no C toolchain.
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=${TARGETOS} GOARCH=${TARGETARCH} GOAMD64=v1 GOARM64=v8.0 \
    go build -trimpath -buildvcs=false -mod=readonly \
      -ldflags "-s -w -buildid= -X main.version=${VERSION} -X main.commit=${COMMIT}" \
      -o /out/keybroker ./cmd/keybroker

# The PKCS#11 build: cgo on, linked dynamically against glibc.
FROM golang:${GO_VERSION}-${DEBIAN_RELEASE} AS build-pkcs11
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG VERSION=dev
ARG COMMIT=
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=1 GOOS=linux go build -trimpath -buildvcs=false \
      -ldflags "-s -w -X main.version=${VERSION} -X main.commit=${COMMIT}" \
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
ARG VERSION=dev
ARG COMMIT=
LABEL org.opencontainers.image.title="keybroker" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${COMMIT}" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /out/keybroker /usr/local/bin/keybroker
# 65532 is distroless's "nonroot"; numeric, so a runAsNonRoot check can see it.
USER 65532:65532
ENV KEYBROKER_ENV=production
EXPOSE 3001
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/keybroker", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/keybroker"]
CMD ["serve"]
