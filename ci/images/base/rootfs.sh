#!/usr/bin/env bash
# Builds the root filesystem of a stand-in for `debian:bookworm-slim` into $1, for machines
# that cannot pull images (scripts/container-tier imports it with `docker import`).
# The look-alike RabbitMQ/PostgreSQL images and the eventline runtime image build on it, from
# Debian packages, so CI needs the Debian mirror only.
set -euo pipefail
root=$1
debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian >/dev/null

# What the official Debian images add for life in a container. No package may start a
# service (there is no init; apt would fail, or leave daemons behind).
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod +x "$root/usr/sbin/policy-rc.d"
# No recommended packages, and no package caches left in any layer (the official images'
# docker-clean), so `apt-get update && apt-get install … && rm -rf /var/lib/apt/lists/*`
# in a Dockerfile leaves nothing else behind.
cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'APT'
APT::Install-Recommends "false";
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT
# The "slim": no documentation or translations, now or from later installs.
cat >"$root/etc/dpkg/dpkg.cfg.d/docker-slim" <<'DPKG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
DPKG
find "$root/usr/share/doc" -mindepth 2 ! -name copyright ! -type d -delete
rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/*
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
