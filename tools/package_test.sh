#!/usr/bin/env bash
# Build the collection tarball from the copy in build/, check what it holds,
# install it offline into a scratch collections path and run modules from it.
# Run by `make package-test` (which sets ROOT, VENV_BIN and COLLECTION_DIR).
set -euo pipefail

: "${ROOT:?}" "${VENV_BIN:?}" "${COLLECTION_DIR:?}"
export PATH="$VENV_BIN:$PATH"
WORK=$(mktemp -d /var/tmp/dom0-reflink-package.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

ansible-galaxy collection build --force --output-path "$WORK/dist" "$COLLECTION_DIR" >/dev/null
tarball=$(ls "$WORK"/dist/dom0-reflink-*.tar.gz)
echo "package-test: built $(basename "$tarball") ($(stat -c %s "$tarball") bytes)"

contents=$(tar -tzf "$tarball")
# Nothing generated may ship: no venv, build/ (the docs site and its screenshots
# are there), test output, cache or image.
unwanted=$(echo "$contents" | grep -E '(^|/)(\.venv[^/]*|build|tests/output|__pycache__|\.git|\.pytest_cache|\.ruff_cache|\.mypy_cache|\.ansible|\.ci)(/|$)|\.img$|\.pyc$|\.png$|^changelogs/\.plugin-cache\.yaml$' || true)
if [ -n "$unwanted" ]; then
    echo "package-test: the tarball holds files it must not:" >&2
    echo "$unwanted" >&2
    exit 1
fi
for wanted in MANIFEST.json README.md meta/runtime.yml plugins/modules/reflink_volume.py \
              plugins/module_utils/_fs/clone.py roles/pool/meta/argument_specs.yml \
              docs/docsite/extra-docs.yml docs/docsite/rst/guide.rst; do
    grep -qx "$wanted" <<<"$contents" || { echo "package-test: $wanted is missing" >&2; exit 1; }
done

# Offline install (no Galaxy server is reachable or needed) and a run from the installed copy.
ansible-galaxy collection install --offline --force -p "$WORK/collections" "$tarball" >/dev/null
installed="$WORK/collections/ansible_collections/dom0/reflink"
[ -f "$installed/MANIFEST.json" ] || { echo "package-test: install left no MANIFEST.json" >&2; exit 1; }

export ANSIBLE_COLLECTIONS_PATH="$WORK/collections" ANSIBLE_LOCALHOST_WARNING=False \
       ANSIBLE_INVENTORY_UNPARSED_WARNING=False ANSIBLE_PYTHON_INTERPRETER="$VENV_BIN/python"
if ! ansible-doc dom0.reflink.reflink_volume >"$WORK/doc.txt" || ! grep -q "reflink_volume" "$WORK/doc.txt"; then
    echo "package-test: ansible-doc failed" >&2
    exit 1
fi
pool="$WORK/pool"
out=$(ansible localhost -c local -m dom0.reflink.reflink_pool -a "path=$pool require_reflink=false")
grep -q '"changed": true' <<<"$out" || { echo "package-test: reflink_pool gave: $out" >&2; exit 1; }
out=$(ansible localhost -c local -m dom0.reflink.reflink_volume -a "pool=$pool vid=appvms/pkg/private size=1M")
grep -q '"changed": true' <<<"$out" || { echo "package-test: reflink_volume gave: $out" >&2; exit 1; }
[ "$(stat -c %s "$pool/appvms/pkg/private.img")" = 1048576 ] || { echo "package-test: no 1 MiB image" >&2; exit 1; }
echo "package-test: installed offline and ran reflink_pool and reflink_volume from $installed"
