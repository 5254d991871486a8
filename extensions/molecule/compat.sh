#!/usr/bin/env bash
# One compatibility run of the molecule scenarios `default` (prepare, converge,
# idempotence, verify, the example playbook, destroy), `role_pool` (the
# role's filters and its one batch task are templated by this ansible-core too) and
# `maintenance` (the role dom0.reflink.maintenance: its report is templated, with the
# collection's filter maintenance_report, by this ansible-core), run by `make compat`
# from the repository root:
#
#   compat.sh LABEL VENV_BIN [MODULE_PYTHON]
#
# VENV_BIN is the bin directory of the virtual environment with ansible-core
# and molecule (the controller). MODULE_PYTHON, when given, is the interpreter
# the modules run with on the managed host (REFLINK_MODULE_PYTHON, read by
# extensions/molecule/inventory.yml); by default the controller's.
set -euo pipefail

[ $# -ge 2 ] || { echo "usage: $0 LABEL VENV_BIN [MODULE_PYTHON]" >&2; exit 2; }
label=$1 venv_bin=$2 module_python=${3:-}
export PATH="$venv_bin:$PATH"
if [ -n "$module_python" ]; then
    export REFLINK_MODULE_PYTHON=$module_python
else
    unset REFLINK_MODULE_PYTHON
    module_python=$venv_bin/python
fi

echo "== compat $label: $(ansible --version | head -n 1) on $("$venv_bin/python" --version);" \
     "modules on $("$module_python" --version) ($module_python)"
start=$(date +%s)
molecule test --scenario-name default
molecule test --scenario-name role_pool
molecule test --scenario-name maintenance
echo "== compat $label: passed in $(( $(date +%s) - start )) s"
