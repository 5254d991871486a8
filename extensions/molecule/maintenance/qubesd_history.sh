#!/usr/bin/env bash
# The volumes of the scenario maintenance, with a history made the way qubesd's file-reflink
# driver makes it (on-disk contract, section 4), at fixed times in October and November 2026:
#
#   qubesd_history.sh POOL
#
# A VM's session: its start renames the precache to the dirty image, the VM writes 1 MiB, its
# stop keeps the clean image as a revision named after the clean image's mtime (the file's own
# mtime is the time of the copy), prunes revisions beyond revisions_to_keep, renames the dirty
# image over the clean one (its mtime: the stop) and makes a new precache.
#
#   vm-templates/debian-12/root  64 MiB; four sessions, three revisions kept
#   appvms/work/private          32 MiB; two sessions, two revisions kept, a stale tempfile
#   appvms/mail/private          32 MiB; one session whose revision is a full copy (cp without
#                                reflink, as a restore across file systems leaves it)
#   appvms/sys-net/private       32 MiB; started and never stopped: a pending commit
#   appvms/old/private           16 MiB; no VM of qubes.xml has it (an orphan)
set -euo pipefail

[ $# -eq 1 ] || { echo "usage: $0 POOL" >&2; exit 2; }
pool=$1

at() { date -u -d "$1" +%s; }
stamp() { date -u -d "@$1" +%Y-%m-%dT%H:%M:%SZ; }

# write FILE OFFSET_MIB COUNT_MIB: random data, in place.
write() {
    dd if=/dev/urandom of="$1" bs=1M seek="$2" count="$3" conv=notrunc,fsync status=none
}

# create VID SIZE_MIB TIME: a clean image with data in its first MiBs, and its precache.
create() {
    local clean="$pool/$1.img"
    mkdir -p "$(dirname "$clean")"
    truncate --size "$2M" "$clean"
    write "$clean" 0 $(($2 / 2))
    chmod 0600 "$clean"
    touch -d "@$(at "$3")" "$clean"
    precache "$1"
}

precache() {
    cp --reflink=always "$pool/$1.img" "$pool/$1-precache.img"
    touch -r "$pool/$1.img" "$pool/$1-precache.img"
}

start() {
    mv "$pool/$1-precache.img" "$pool/$1-dirty.img"
    write "$pool/$1-dirty.img" 0 1
}

# revisions VID: the revision files of the volume, by id.
revisions() {
    local dir base
    dir=$(dirname "$pool/$1") base=$(basename "$1")
    find "$dir" -maxdepth 1 -name "$base.img.*@*Z" -printf '%f\n' \
        | sed -E "s/^$base\.img\.([0-9]+)@.*/\1 &/" | sort -n | cut -d ' ' -f 2
}

# stop VID TIME KEEP [COPY]: the commit; COPY=copy makes the revision a full copy.
stop() {
    local vid=$1 when keep=$3 clean="$pool/$1.img" last next revision
    when=$(at "$2")
    last=$(revisions "$vid" | tail -n 1 | sed -E 's/.*\.img\.([0-9]+)@.*/\1/')
    next=$((${last:-0} + 1))
    revision="$clean.$next@$(stamp "$(stat -c %Y "$clean")")"
    if [ "${4:-}" = copy ]; then
        cp --reflink=never --sparse=always "$clean" "$revision"
    else
        cp --reflink=always "$clean" "$revision"
    fi
    touch -d "@$when" "$revision"
    revisions "$vid" | head -n "-$keep" | while read -r name; do rm -f "$(dirname "$clean")/$name"; done
    touch -d "@$when" "$pool/$vid-dirty.img"
    mv "$pool/$vid-dirty.img" "$clean"
    precache "$vid"
}

session() {
    start "$1"
    stop "$@"
}

create vm-templates/debian-12/root 64 2026-09-14T10:00:00
for when in 2026-10-05T09:00:00 2026-10-19T09:00:00 2026-11-02T09:00:00 2026-11-03T18:00:00; do
    session vm-templates/debian-12/root "$when" 3
done

create appvms/work/private 32 2026-11-01T08:00:00
session appvms/work/private 2026-11-04T20:00:00 2
session appvms/work/private 2026-11-05T07:30:00 2
head -c 1048576 /dev/urandom >"$pool/appvms/work/private.img~k3v9x2qa"
chmod 0600 "$pool/appvms/work/private.img~k3v9x2qa"
touch -d 2026-11-05T07:29:00Z "$pool/appvms/work/private.img~k3v9x2qa"

create appvms/mail/private 32 2026-11-02T12:00:00
session appvms/mail/private 2026-11-05T12:00:00 1 copy

create appvms/sys-net/private 32 2026-11-05T06:00:00
start appvms/sys-net/private

create appvms/old/private 16 2026-06-01T12:00:00
