#!/bin/sh
# Make `python3.11 -m venv` work in any base image the Dockerfiles accept: registry bases such as
# python:3.11-slim already have it; Debian bookworm (the locally imported base of docker/stack.py) and the
# Ubuntu 22.04 CUDA runtime images get python3.11 from apt. Nothing else is installed, and apt's lists are
# removed so the layer stays small.
set -eu
if python3.11 -c 'import ensurepip, venv' 2>/dev/null; then
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends python3.11 python3.11-venv >/dev/null
rm -rf /var/lib/apt/lists/*
python3.11 -c 'import ensurepip, venv'
