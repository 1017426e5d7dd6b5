# syntax=docker/dockerfile:1
# Querycop container image.
#   docker build -t querycop .
#   docker build --build-arg WITH_AZURE_CLI=1 -t querycop:azure .   (adds az, only for
#     GATEKEEPER_BACKEND_TOKEN_CMD; GATEKEEPER_BACKEND_TOKEN_PROVIDER=azure, aws-rds
#     and gcp need no CLI in the image)
#   docker build --build-arg VERSION=1.2.3 -t querycop:1.2.3 .      (default: git describe)
# scripts/image-build-stage runs the build stage below without Docker (CI
# does), and the Dockerfile follows hadolint's rules (ship_test.go).

FROM golang:1.26-trixie AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
# Empty: scripts/build asks git (.git is in the build context), and
# without it the binary reports Go's build information.
ARG VERSION=
# The same script CI runs outside Docker (a test checks this line stays).
# The output path is relative so that scripts/image-build-stage can run
# this stage in a scratch directory.
RUN VERSION=${VERSION} scripts/build out/querycop

FROM debian:trixie-slim
ARG WITH_AZURE_CLI=0
# ca-certificates provides /etc/ssl/certs/ca-certificates.crt, the bundle the
# cookbooks point GATEKEEPER_BACKEND_TLS_CA_FILE at. Not pinned (hadolint
# DL3008): the CA bundle and az should be the newest the release ships.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && if [ "$WITH_AZURE_CLI" = "1" ]; then apt-get install -y --no-install-recommends azure-cli; fi \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /home/querycop --create-home querycop
COPY --from=build /src/out/querycop /usr/local/bin/querycop
USER querycop
# In a container the ports must be reachable from outside it.
ENV GATEKEEPER_LISTEN_ADDR=0.0.0.0 \
    GATEKEEPER_API_ADDR=0.0.0.0
EXPOSE 15432 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 \
  CMD ["/usr/local/bin/querycop", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/querycop"]
