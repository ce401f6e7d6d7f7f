# syntax=docker/dockerfile:1
# The `validator` binary alone on Debian slim, run as a non-root user. Build from the repository
# root:
#
#   docker build --build-arg VALIDATOR_GIT_COMMIT=$(git rev-parse --short=12 HEAD) -t validator .
#
# The configuration and key files are mounted at /etc/validator (deploy/compose.validator.yml).

FROM rust:1.95.0-slim-bookworm AS build
WORKDIR /src
COPY . .
# `.git` is not copied: the commit comes in as an argument (build.rs reads it).
ARG VALIDATOR_GIT_COMMIT=unknown
ENV VALIDATOR_GIT_COMMIT=${VALIDATOR_GIT_COMMIT}
RUN cargo build --release --locked -p validator-bin \
    && install -m 0755 target/release/validator /validator

FROM debian:bookworm-slim
# TLS trusts Mozilla's roots built into the binary: no CA bundle needed.
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/validator validator \
    && install -d -m 0700 -o validator -g validator /var/lib/validator
COPY --from=build /validator /usr/local/bin/validator
USER validator
VOLUME ["/var/lib/validator"]
ENTRYPOINT ["/usr/local/bin/validator"]
CMD ["run", "--config", "/etc/validator/validator.toml"]
