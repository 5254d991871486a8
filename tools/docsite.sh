#!/usr/bin/env bash
# Build the docs site into build/docsite/html; run by `make docs` (which sets
# ROOT, DOCS_VENV_BIN and ANSIBLE_COLLECTIONS_PATH, with the collection copied
# to build/collections).
#
# The Sphinx project is made afresh each time in build/docsite/sphinx:
#   1. `antsibull-docs sphinx-init` writes conf.py and rst/index.rst (from
#      docs/sphinx/index.rst, the site's front page);
#   2. docs/sphinx/conf-offline.py is appended to conf.py (no intersphinx
#      download, MyST for the Markdown pages);
#   3. `antsibull-docs collection` renders the module and role pages and the
#      extra docs of docs/docsite (the guide) into rst/collections/;
#   4. docs/performance.md and docs/reliability.md are copied next to
#      index.rst, as they are: MyST reads them;
#   5. sphinx-build -W (every warning is an error) writes the HTML.
# Nothing is fetched from the network.
set -euo pipefail

: "${ROOT:?}" "${DOCS_VENV_BIN:?}" "${ANSIBLE_COLLECTIONS_PATH:?}"
export PATH="$DOCS_VENV_BIN:$PATH"
# Reproducible output: no build date or time goes into the pages.
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || echo 0)}"

SITE="$ROOT/build/docsite"
PROJECT="$SITE/sphinx"
HTML="$SITE/html"

rm -rf "$PROJECT" "$HTML"
# antsibull-docs wants its destination directories writable by their owner only.
mkdir -p "$SITE"
chmod 0755 "$SITE"
mkdir -m 0755 "$PROJECT"

antsibull-docs sphinx-init \
    --use-current \
    --fail-on-error \
    --no-add-antsibull-docs-version \
    --dest-dir "$PROJECT" \
    --index-rst-source "$ROOT/docs/sphinx/index.rst" \
    --project dom0.reflink \
    --copyright 'dom0.reflink developers' \
    --title dom0.reflink \
    dom0.reflink >/dev/null
cat "$ROOT/docs/sphinx/conf-offline.py" >>"$PROJECT/conf.py"

chmod og-w "$PROJECT/rst"
antsibull-docs \
    --config-file "$ROOT/docs/sphinx/antsibull-docs.cfg" \
    collection \
    --use-current \
    --fail-on-error \
    --dest-dir "$PROJECT/rst" \
    dom0.reflink >/dev/null

for page in performance reliability; do
    install -m 0644 "$ROOT/docs/$page.md" "$PROJECT/rst/$page.md"
done

sphinx-build -b html -q -W --keep-going -n -j 1 -c "$PROJECT" -d "$SITE/doctrees" "$PROJECT/rst" "$HTML"
echo "make docs: site in build/docsite/html ($(find "$HTML" -name '*.html' | wc -l) pages)"
