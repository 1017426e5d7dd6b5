# syntax=docker/dockerfile:1
# Querycop container image.
#   docker build -t querycop .
#   docker build --build-arg WITH_AZURE_CLI=1 -t querycop:azure .   (adds az for Entra ID tokens)

FROM golang:1.26-trixie AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
# The same script CI runs outside Docker (a test checks this line stays).
RUN VERSION=${VERSION} scripts/build /out/querycop

FROM debian:trixie-slim
ARG WITH_AZURE_CLI=0
# ca-certificates provides /etc/ssl/certs/ca-certificates.crt, the bundle the
# cookbooks point GATEKEEPER_BACKEND_TLS_CA_FILE at.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && if [ "$WITH_AZURE_CLI" = "1" ]; then apt-get install -y --no-install-recommends azure-cli; fi \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /home/querycop --create-home querycop
COPY --from=build /out/querycop /usr/local/bin/querycop
USER querycop
# In a container the ports must be reachable from outside it.
ENV GATEKEEPER_LISTEN_ADDR=0.0.0.0 \
    GATEKEEPER_API_ADDR=0.0.0.0
EXPOSE 15432 8080
HEALTHCHECK --interval=10s --timeout=5s --start-period=5s --retries=3 \
  CMD ["/usr/local/bin/querycop", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/querycop"]
