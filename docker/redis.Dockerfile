# A Redis server image from Debian's package, for machines that cannot pull redis:7-alpine (docker/stack.py
# builds it on the locally imported bookworm and passes it to compose as REDIS_IMAGE). It answers the same
# `redis-server ...` command and `redis-cli ping` healthcheck as the official image.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN export DEBIAN_FRONTEND=noninteractive \
    && apt-get update -qq \
    && apt-get install -y -qq --no-install-recommends redis-server >/dev/null \
    && rm -rf /var/lib/apt/lists/*
USER redis
WORKDIR /var/lib/redis
EXPOSE 6379
CMD ["redis-server", "--protected-mode", "no"]
