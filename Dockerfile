# syntax=docker/dockerfile:1
#
# keybroker container image: a static binary on distroless "static", run as
# the image's non-root user. The runtime image has no shell, no package
# manager and no libc; the health check is the binary itself.
#
#   docker build -t keybroker:latest --build-arg VERSION=$(git describe --tags --always) .
#   docker run --rm keybroker:latest kek generate

ARG GO_VERSION=1.26

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
