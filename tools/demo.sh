#!/usr/bin/env bash
# Run playbooks/demo.yml against a throwaway btrfs filesystem (root only).
#
# Makes a 1 GiB sparse image under /var/tmp/dom0-reflink-demo, attaches it to a
# loop device, formats it btrfs, mounts it on /var/tmp/dom0-reflink-demo/mnt
# and runs
#   ansible-playbook -i localhost, -c local playbooks/demo.yml -e pool=<mnt>/pool
# with the collection taken from build/collections (see `make collection`).
# Whatever happens, the mount, the loop device and the image are removed on exit.
#
# Usually run as `make demo`, which copies the tree and sets PATH first.
# Extra arguments are passed to ansible-playbook (e.g. -v, --check, --diff).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEMO_DIR=${DEMO_DIR:-/var/tmp/dom0-reflink-demo}
IMAGE=$DEMO_DIR/btrfs.img
MNT=$DEMO_DIR/mnt
POOL=$MNT/pool
export PATH="$ROOT/.venv/bin:$PATH:/usr/local/sbin:/usr/sbin:/sbin"
export ANSIBLE_COLLECTIONS_PATH=${ANSIBLE_COLLECTIONS_PATH:-$ROOT/build/collections}
export ANSIBLE_LOCALHOST_WARNING=False
export ANSIBLE_INVENTORY_UNPARSED_WARNING=False
export ANSIBLE_RETRY_FILES_ENABLED=False
# The modules run with a known interpreter rather than a discovered one (which
# may be a pyenv shim of an inactive version).
if [ -z "${ANSIBLE_PYTHON_INTERPRETER:-}" ]; then
    ANSIBLE_PYTHON_INTERPRETER=$(python3 -c 'import sys; print(sys.executable)')
    export ANSIBLE_PYTHON_INTERPRETER
fi

if [ "$(id -u)" != 0 ]; then
    echo "demo.sh: must run as root (losetup, mkfs.btrfs, mount)" >&2
    exit 1
fi
if [ ! -d "$ANSIBLE_COLLECTIONS_PATH/ansible_collections/dom0/reflink" ]; then
    echo "demo.sh: no collection under $ANSIBLE_COLLECTIONS_PATH; run 'make collection' (or 'make demo')" >&2
    exit 1
fi

DEVICE=
cleanup() {
    local status=$?
    set +e
    trap - EXIT INT TERM HUP
    if mountpoint -q "$MNT"; then
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            umount "$MNT" 2>/dev/null && break
            sleep 0.5
        done
        mountpoint -q "$MNT" && umount --lazy "$MNT"
    fi
    if [ -n "$DEVICE" ]; then
        losetup --detach "$DEVICE" 2>/dev/null
    fi
    # A device left by an earlier run that died before its trap ran.
    losetup --associated "$IMAGE" --noheadings --output NAME 2>/dev/null | while read -r dev; do
        losetup --detach "$dev"
    done
    rm -f "$IMAGE"
    rmdir "$MNT" "$DEMO_DIR" 2>/dev/null
    echo "demo.sh: removed the demo filesystem ($IMAGE)"
    exit "$status"
}
# On a signal, stop ansible-playbook first (bash runs a trap only once the
# foreground command ends, hence the playbook runs in the background + wait).
CHILD=
on_signal() {
    if [ -n "$CHILD" ]; then
        kill -TERM "$CHILD" 2>/dev/null
        wait "$CHILD" 2>/dev/null
    fi
    exit "$1"
}
trap cleanup EXIT
trap 'on_signal 130' INT
trap 'on_signal 143' TERM
trap 'on_signal 129' HUP

# Leftovers of an earlier run that was killed.
if mountpoint -q "$MNT" 2>/dev/null; then
    umount "$MNT" || umount --lazy "$MNT"
fi
losetup --associated "$IMAGE" --noheadings --output NAME 2>/dev/null | while read -r dev; do
    losetup --detach "$dev"
done
rm -f "$IMAGE"

mkdir -p "$MNT"
truncate --size 1G "$IMAGE"
DEVICE=$(losetup --find --show "$IMAGE")
mkfs.btrfs --quiet --force "$DEVICE" >/dev/null
mount -t btrfs "$DEVICE" "$MNT"
echo "demo.sh: btrfs on $DEVICE ($IMAGE, 1 GiB sparse) mounted on $MNT"

cd "$ROOT"
ansible-playbook -i localhost, -c local playbooks/demo.yml -e "pool=$POOL" "$@" &
CHILD=$!
wait "$CHILD"
