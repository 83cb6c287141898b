# syntax=docker/dockerfile:1
# Build stage: the whole workspace, release profile.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin koukan

# Runtime stage: just the binary, its CA roots and an unprivileged user.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --home /var/lib/koukan --create-home koukan
COPY --from=build /src/target/release/koukan /usr/local/bin/koukan
COPY configs /etc/koukan
USER koukan
WORKDIR /var/lib/koukan
EXPOSE 2525 8000 9901
ENTRYPOINT ["/usr/local/bin/koukan"]
CMD ["--config", "/etc/koukan/quickstart.yaml"]
