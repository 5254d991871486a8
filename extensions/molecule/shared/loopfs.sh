#!/usr/bin/env bash
# A btrfs filesystem on a sparse image, for the molecule scenarios (root only).
#
#   loopfs.sh up DIR SIZE   DIR/btrfs.img (sparse, SIZE as truncate takes it),
#                           attached to a loop device, formatted btrfs and
#                           mounted on DIR/mnt; each step only when not done yet
#   loopfs.sh down DIR      unmount DIR/mnt, detach every loop device of
#                           DIR/btrfs.img, remove DIR; nothing for what is absent
#
# Prints one line per step done and nothing when there was nothing to do, so a
# task can report a change exactly when there was one.
set -euo pipefail
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

usage() { echo "usage: $0 up DIR SIZE | down DIR" >&2; exit 2; }
[ $# -ge 2 ] || usage
action=$1 dir=$2
case $dir in
    /?*/?*) ;;
    *) echo "loopfs.sh: DIR must be an absolute path at least two levels deep (got '$dir')" >&2; exit 2 ;;
esac
image=$dir/btrfs.img mnt=$dir/mnt
if [ "$(id -u)" != 0 ]; then
    echo "loopfs.sh: must run as root (losetup, mkfs.btrfs, mount)" >&2
    exit 1
fi

devices() { losetup --associated "$image" --noheadings --output NAME 2>/dev/null || true; }

case $action in
up)
    [ $# -eq 3 ] || usage
    if [ ! -d "$mnt" ]; then mkdir -p "$mnt"; echo "created $mnt"; fi
    if [ ! -e "$image" ]; then truncate --size "$3" "$image"; echo "created $image ($3, sparse)"; fi
    device=$(devices | head -n 1)
    if [ -z "$device" ]; then
        device=$(losetup --find --show "$image")
        echo "attached $image to $device"
    fi
    if [ "$(blkid --probe --match-tag TYPE --output value "$device" || true)" != btrfs ]; then
        mkfs.btrfs --quiet --force "$device" >/dev/null
        echo "made a btrfs filesystem on $device"
    fi
    if ! mountpoint --quiet "$mnt"; then
        mount -t btrfs "$device" "$mnt"
        echo "mounted $device on $mnt"
    fi
    ;;
down)
    [ $# -eq 2 ] || usage
    if mountpoint --quiet "$mnt" 2>/dev/null; then
        # A moment after the last task the filesystem may still be busy.
        for _ in 1 2 3 4 5 6 7 8 9 10; do
            umount "$mnt" 2>/dev/null && break
            sleep 0.5
        done
        if mountpoint --quiet "$mnt"; then umount "$mnt"; fi
        echo "unmounted $mnt"
    fi
    for device in $(devices); do
        losetup --detach "$device"
        echo "detached $device"
    done
    if [ -e "$dir" ]; then rm -rf -- "$dir"; echo "removed $dir"; fi
    ;;
*)
    usage
    ;;
esac
