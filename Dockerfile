# Build:  docker build -t gecholog-broker .
# Run:    see docker-compose.yml

FROM golang:1.26-bookworm AS build
WORKDIR /src

# Modules first, so a source change does not download them again.
COPY go.mod go.sum ./
RUN go mod download

COPY cmd/broker/ ./cmd/broker/
COPY broker/ ./broker/
COPY gecholog/ ./gecholog/
COPY kv/ ./kv/
COPY replica/ ./replica/
COPY ops/ ./ops/
COPY demo/ ./demo/
COPY statuspage/ ./statuspage/
COPY internal/ ./internal/

# A static binary: the final image has no libc.
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o /out/broker ./cmd/broker

# distroless/static: CA certificates and tzdata, no shell, no package manager.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/broker /broker
USER nonroot:nonroot
ENTRYPOINT ["/broker"]
