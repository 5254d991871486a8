# Build and test entry points for the dom0.reflink collection (GNU make).
#
#   make test     Debian packages + venvs, every test suite, sanity, lint, docs-check, package-test
#   make sanity   ansible-test sanity on a copy of the tree (offline pip bootstrap)
#   make docs     the docs site (Sphinx, made by antsibull-docs) in build/docsite/html
#   make demo     run playbooks/demo.yml against a throwaway btrfs loop mount
#   make clean    remove build/ and tests/output/
#
# Everything runs as root on Debian; `make deps` installs what is missing.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

ROOT := $(patsubst %/,%,$(dir $(abspath $(lastword $(MAKEFILE_LIST)))))

# Interpreter for .venv: python3.11 when there is one, else python3.
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3 2>/dev/null)
VENV := $(ROOT)/.venv
VENV_BIN := $(VENV)/bin
REQUIREMENTS := $(ROOT)/tests/requirements.txt
VENV_STAMP := $(VENV)/.requirements-installed

# ansible-test needs the collection at .../ansible_collections/<ns>/<name>
# and does not follow symlinks, so sanity runs on a copy of the tree.
COLLECTIONS_PATH := $(ROOT)/build/collections
COLLECTION_DIR := $(COLLECTIONS_PATH)/ansible_collections/dom0/reflink

# Python version ansible-test sanity runs with.
SANITY_PYTHON ?= 3.11
# Extra arguments, e.g. `make sanity SANITY_ARGS="--test pylint"`.
SANITY_ARGS ?=
PYTEST_ARGS ?=
# `make pytest` runs tests/core and tests/modules on PYTEST_JOBS pytest-xdist workers
# (processes; each makes its own loop filesystems; tests marked serial run alone:
# tests/README.md). Default: 2 for the whole suite, 0 (one process, no xdist) when
# PYTEST_ARGS is given, e.g. `make pytest PYTEST_ARGS="tests/core/test_locks.py -x"`;
# PYTEST_JOBS=2 (or auto) with PYTEST_ARGS runs those in parallel.
PYTEST_JOBS ?= $(if $(strip $(PYTEST_ARGS)),0,2)
PYTEST_XDIST = $(if $(filter-out 0,$(PYTEST_JOBS)),-n $(PYTEST_JOBS) --dist worksteal)

# `make molecule`: the scenarios of extensions/molecule (MOLECULE_ARGS="-s default"
# for one). `make compat`: the scenarios default, role_pool and maintenance
# (extensions/molecule/compat.sh) with ansible-core 2.16 (in
# .venv-2.16) and with Python 3.13 as the modules' interpreter (PYTHON313=path
# to choose it; the run is skipped when there is none).
MOLECULE_ARGS ?= --all
COMPAT_VENV := $(ROOT)/.venv-2.16
COMPAT_REQUIREMENTS := $(ROOT)/extensions/molecule/requirements-ansible-2.16.txt
COMPAT_STAMP := $(COMPAT_VENV)/.requirements-installed
PYTHON313 ?=

# `make docs`, `make docs-check`: the docs site's own virtual environment (Sphinx,
# its theme, myst-parser, Playwright), kept apart from .venv like .venv-2.16.
DOCS_VENV := $(ROOT)/.venv-docs
DOCS_REQUIREMENTS := $(ROOT)/docs/sphinx/requirements.txt
DOCS_STAMP := $(DOCS_VENV)/.requirements-installed

# command:package pairs for `make deps` (sbin directories are searched too);
# python3-venv is added when $(PYTHON) lacks ensurepip (Debian's own Python).
# sshd, ssh, ssh-keygen, sudo, visudo, useradd: the fleet suite (tests/fleet)
# runs its own sshd per host and logs in as a user it makes, with sudo.
DEB_COMMANDS := \
	mkfs.btrfs:btrfs-progs \
	compsize:btrfs-compsize \
	mkfs.xfs:xfsprogs \
	mkfs.ext4:e2fsprogs \
	duperemove:duperemove \
	strace:strace \
	rsync:rsync \
	losetup:mount \
	git:git \
	shellcheck:shellcheck \
	fusermount3:fuse3 \
	chromium:chromium \
	sshd:openssh-server \
	ssh:openssh-client \
	ssh-keygen:openssh-client \
	sudo:sudo \
	visudo:sudo \
	useradd:passwd

RSYNC_EXCLUDES := \
	--exclude=/.git \
	--exclude=/.venv \
	--exclude='/.venv*' \
	--exclude=/build \
	--exclude=/tests/output \
	--exclude=__pycache__ \
	--exclude='*.py[cod]' \
	--exclude=.pytest_cache \
	--exclude=.ruff_cache \
	--exclude=.mypy_cache \
	--exclude=/.cache \
	--exclude=/.tox \
	--exclude='*.img' \
	--exclude='/dom0-reflink-*.tar.gz'

# Prints the pip version ansible-test bootstraps (get_venv_packages' default).
define ANSIBLE_TEST_PIP_VERSION_PY
import importlib.util, pathlib, re, sys
spec = importlib.util.find_spec("ansible_test")
src = pathlib.Path(spec.origin).parent / "_internal" / "python_requirements.py"
found = re.search(r"pip=['\"]([0-9][0-9.]*)['\"]", src.read_text())
if not found:
    sys.exit("cannot find the bootstrap pip version in %s" % src)
print(found.group(1))
endef
export ANSIBLE_TEST_PIP_VERSION_PY

.PHONY: help deps venv collection test pytest test-model test-reliability test-powercut test-fleet sanity lint docs docs-check docs-venv package-test molecule compat demo clean

help:
	@echo 'Targets:'
	@echo '  make test        deps + venv, then pytest, test-model, test-reliability, test-powercut, test-fleet, sanity, lint,'
	@echo '                   package-test, bench-quick, molecule, docs-check and compat'
	@echo '  make pytest      tests/core and tests/modules on 2 pytest-xdist workers (PYTEST_JOBS=N);'
	@echo '                   PYTEST_ARGS="..." to pass options (then one process unless PYTEST_JOBS is given)'
	@echo '  make test-model  stateful property-based test of the core on btrfs, XFS, ext4 (tests/model), ~1 min;'
	@echo '                   longer: MODEL_EXAMPLES=2000 (per file system), MODEL_SEED=random for new sequences,'
	@echo '                   MODEL_STRICT=all to fail on the known defects it reports'
	@echo '  make test-reliability  crash matrix, faults, concurrency, bad input (tests/reliability)'
	@echo '  make test-powercut  power cuts replayed from a block-level write log (tests/powercut), ~4 min'
	@echo '  make test-fleet  three SSH hosts, a user with sudo, forks 3, pipelining on/off (tests/fleet), ~2-3 min'
	@echo '  make sanity      ansible-test sanity (SANITY_ARGS="--test NAME" to narrow)'
	@echo '  make lint        ruff, mypy (strict on the core), yamllint, ansible-lint (production), changelog and docs lint'
	@echo '  make package-test  build the tarball, install it offline, run a module from it'
	@echo '  make molecule    molecule test of extensions/molecule/* (MOLECULE_ARGS="-s default" for one)'
	@echo '  make compat      scenarios default, role_pool, maintenance with ansible-core 2.16, and modules on Python 3.13'
	@echo '  make docs        the docs site (modules, role, guide, performance, reliability) in build/docsite/html'
	@echo '  make docs-check  make docs, then every page in headless Chromium: titles, option tables, links;'
	@echo '                   and the maintenance report of the molecule scenario maintenance, against its results'
	@echo '  make demo        run playbooks/demo.yml on a temporary btrfs loop mount'
	@echo '  make bench       benchmarks against cp and the bare ioctl, ~15 min (ARGS=--quick: < 1 min)'
	@echo '  make bench-quick every benchmark case, tiny, to check that they run'
	@echo '  make venv        create/update .venv from tests/requirements.txt'
	@echo '  make deps        apt-get install missing Debian tools'
	@echo '  make collection  copy the tree to build/collections/ansible_collections/dom0/reflink'
	@echo '  make clean       remove build/ and tests/output/'

deps:
	@missing=''; \
	for pair in $(DEB_COMMANDS); do \
		cmd=$${pair%%:*}; pkg=$${pair#*:}; \
		if ! PATH="$$PATH:/usr/local/sbin:/usr/sbin:/sbin" command -v "$$cmd" >/dev/null 2>&1; then \
			missing="$$missing $$pkg"; \
		fi; \
	done; \
	if [ -n "$(PYTHON)" ] && ! "$(PYTHON)" -c 'import ensurepip, venv' >/dev/null 2>&1; then \
		missing="$$missing python3-venv"; \
	fi; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" != 0 ]; then \
			echo "make deps: missing Debian packages:$$missing (run as root to install them)" >&2; \
			exit 1; \
		fi; \
		missing=$$(printf '%s\n' $$missing | sort -u | tr '\n' ' '); \
		echo "make deps: installing $$missing"; \
		export DEBIAN_FRONTEND=noninteractive; \
		policy=/usr/sbin/policy-rc.d; own_policy=''; \
		if [ ! -e "$$policy" ]; then \
			own_policy=$$policy; \
			trap 'rm -f "$$own_policy"' EXIT; \
			printf '#!/bin/sh\n# make deps: openssh-server must not start a system sshd\ncase "$$1" in ssh|ssh.service|ssh.socket) exit 101;; esac\nexit 0\n' >"$$policy"; \
			chmod 0755 "$$policy"; \
		fi; \
		apt-get update -q; \
		apt-get install -y -q --no-install-recommends -o DPkg::Lock::Timeout=300 $$missing; \
	fi

venv: $(VENV_STAMP)

# Re-done when tests/requirements.txt changes; a venv made by another Python
# version than $(PYTHON) is replaced.
$(VENV_STAMP): $(REQUIREMENTS)
	@if [ -z "$(PYTHON)" ]; then echo 'make venv: no python3.11 or python3 on PATH' >&2; exit 1; fi
	@want=$$("$(PYTHON)" -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
	have=$$("$(VENV_BIN)/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true); \
	if [ "$$want" != "$$have" ]; then \
		echo "make venv: creating $(VENV) with $(PYTHON) (Python $$want)"; \
		rm -rf "$(VENV)"; \
		"$(PYTHON)" -m venv "$(VENV)"; \
	fi
	"$(VENV_BIN)/python" -m pip install --disable-pip-version-check -q -r "$(REQUIREMENTS)"
	touch "$@"

# The copy gets a git repository of its own (with no commit): ansible-test
# lists the files to check with `git ls-files --cached --others
# --exclude-standard` from the nearest .git upwards, and would otherwise find
# this repository's, where build/ is ignored, and skip every target.
collection: deps
	mkdir -p "$(COLLECTION_DIR)"
	rsync -a --delete $(RSYNC_EXCLUDES) "$(ROOT)/" "$(COLLECTION_DIR)/"
	@[ -d "$(COLLECTION_DIR)/.git" ] || git init -q "$(COLLECTION_DIR)"

test: deps venv
	$(MAKE) --no-print-directory pytest
	$(MAKE) --no-print-directory test-model
	$(MAKE) --no-print-directory test-reliability
	$(MAKE) --no-print-directory test-powercut
	$(MAKE) --no-print-directory test-fleet
	$(MAKE) --no-print-directory sanity
	$(MAKE) --no-print-directory lint
	$(MAKE) --no-print-directory package-test
	$(MAKE) --no-print-directory bench-quick
	$(MAKE) --no-print-directory molecule
	$(MAKE) --no-print-directory docs-check
	$(MAKE) --no-print-directory compat

# pytest exits 5 when it collects no test (tests/core and tests/modules may not
# exist yet); that is reported but is not a failure.
pytest: deps venv
	@cd "$(ROOT)" && rc=0; \
	PATH="$(VENV_BIN):$$PATH" "$(VENV_BIN)/python" -m pytest $(PYTEST_XDIST) $(PYTEST_ARGS) || rc=$$?; \
	if [ "$$rc" = 5 ]; then echo 'make pytest: no tests were collected'; rc=0; fi; \
	exit $$rc

# tests/model is not in pytest.ini's testpaths: the stateful property-based test
# (Hypothesis) of the core, in process, with a bounded budget here (tests/model/README.md).
# MODEL_EXAMPLES: sequences per file system (ext4 half), MODEL_STEPS: steps per sequence,
# MODEL_SEED: empty = the same sequences every run, a number, or "random";
# MODEL_STRICT: known defects (tests/model/known_defects.py) that fail instead of being reported.
# The recorded sequences (tests/model/test_regressions.py) run every time.
MODEL_EXAMPLES ?= 80
MODEL_STEPS ?= 50
MODEL_SEED ?=
MODEL_STRICT ?=
test-model: deps venv
	cd "$(ROOT)" && PATH="$(VENV_BIN):$$PATH" MODEL_EXAMPLES="$(MODEL_EXAMPLES)" MODEL_STEPS="$(MODEL_STEPS)" \
		MODEL_SEED="$(MODEL_SEED)" MODEL_STRICT="$(MODEL_STRICT)" \
		"$(VENV_BIN)/python" -m pytest -p no:cacheprovider tests/model $(PYTEST_ARGS)

# tests/reliability is not in pytest.ini's testpaths: it runs here, on its own
# (a few minutes; kill-point counts in tests/output/reliability/kill-points.json).
test-reliability: deps venv
	cd "$(ROOT)" && PATH="$(VENV_BIN):$$PATH" "$(VENV_BIN)/python" -m pytest tests/reliability $(PYTEST_ARGS)

# tests/powercut is not in testpaths either: each operation is recorded on a FUSE disk
# that logs writes and flushes (fusermount3 from Debian's fuse3, mfusepy from PyPI),
# then replayed at its crash states (counts in tests/output/powercut/crash-states.json).
test-powercut: deps venv
	cd "$(ROOT)" && PATH="$(VENV_BIN):$$PATH" "$(VENV_BIN)/python" -m pytest tests/powercut $(PYTEST_ARGS)

# tests/fleet is not in testpaths either: the collection as a fleet uses it, over SSH
# (an sshd per host on 127.0.0.2-4, started by the tests; openssh-server from Debian)
# as an unprivileged user with sudo, three hosts at once, pipelining on and off.
test-fleet: deps venv
	cd "$(ROOT)" && PATH="$(VENV_BIN):$$PATH" "$(VENV_BIN)/python" -m pytest tests/fleet $(PYTEST_ARGS)

# ansible-test bootstraps pip in each of its virtual environments with a script
# it downloads from a host that is unreachable here; tools/get_pip.py is put
# in its cache under the name it looks for (get_pip_<pip version>.py, with the
# pip version read from the installed ansible-test).
sanity: venv collection
	@cache=$$("$(VENV_BIN)/python" -c 'import os; print(os.path.expanduser("~/.ansible/test/cache"))'); \
	pipver=$$("$(VENV_BIN)/python" -c "$$ANSIBLE_TEST_PIP_VERSION_PY"); \
	mkdir -p "$$cache"; \
	install -m 0644 "$(ROOT)/tools/get_pip.py" "$$cache/get_pip_$${pipver//./_}.py"; \
	echo "make sanity: offline pip bootstrap -> $$cache/get_pip_$${pipver//./_}.py"
	cd "$(COLLECTION_DIR)" && PATH="$(VENV_BIN):$$PATH" \
		ansible-test sanity --venv --python $(SANITY_PYTHON) --color no $(SANITY_ARGS)

# Linters of the whole tree.  ansible-lint and antsibull-docs look the
# collection up by name: they get the copy in build/collections; so does mypy
# (mypy.ini: strict on plugins/module_utils), which needs the files under the
# package names they are imported by.
lint: venv collection
	cd "$(ROOT)" && "$(VENV_BIN)/ruff" check --no-cache .
	cd "$(COLLECTIONS_PATH)" && "$(VENV_BIN)/mypy" --config-file "$(ROOT)/mypy.ini" --cache-dir "$(ROOT)/build/mypy-cache" \
		-p ansible_collections.dom0.reflink.plugins.module_utils -p ansible_collections.dom0.reflink.plugins.modules
	cd "$(ROOT)" && "$(VENV_BIN)/yamllint" --strict .
	cd "$(ROOT)" && PATH="$(VENV_BIN):$$PATH" "$(VENV_BIN)/antsibull-changelog" lint
	cd "$(ROOT)" && PATH="$(VENV_BIN):$$PATH" ANSIBLE_COLLECTIONS_PATH="$(COLLECTIONS_PATH)" \
		"$(VENV_BIN)/ansible-lint" --offline -q
	cd "$(COLLECTION_DIR)" && PATH="$(VENV_BIN):$$PATH" ANSIBLE_COLLECTIONS_PATH="$(COLLECTIONS_PATH)" \
		"$(VENV_BIN)/antsibull-docs" lint-collection-docs --plugin-docs .

# The docs site's virtual environment, made once and kept (re-done when its
# requirements change), like .venv-2.16.
docs-venv: $(DOCS_STAMP)

$(DOCS_STAMP): $(DOCS_REQUIREMENTS)
	@if [ -z "$(PYTHON)" ]; then echo 'make docs: no python3.11 or python3 on PATH' >&2; exit 1; fi
	@want=$$("$(PYTHON)" -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
	have=$$("$(DOCS_VENV)/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true); \
	if [ "$$want" != "$$have" ]; then \
		echo "make docs: creating $(DOCS_VENV) with $(PYTHON) (Python $$want)"; \
		rm -rf "$(DOCS_VENV)"; \
		"$(PYTHON)" -m venv "$(DOCS_VENV)"; \
	fi
	"$(DOCS_VENV)/bin/python" -m pip install --disable-pip-version-check -q -r "$(DOCS_REQUIREMENTS)"
	touch "$@"

# The docs site: a Sphinx project made afresh by `antsibull-docs sphinx-init` in
# build/docsite/sphinx (from docs/sphinx/), built offline with -W into
# build/docsite/html (see tools/docsite.sh).
docs: docs-venv collection
	ROOT="$(ROOT)" DOCS_VENV_BIN="$(DOCS_VENV)/bin" ANSIBLE_COLLECTIONS_PATH="$(COLLECTIONS_PATH)" \
		"$(ROOT)/tools/docsite.sh"

# Every page of the site in headless Chromium (Debian's, driven by Playwright):
# tests/docsite, run on its own (conftest.py of tests/ is not loaded); the
# screenshot of the reflink_volume page is build/docsite/reflink_volume.png.
# Also the report of the role dom0.reflink.maintenance that the molecule scenario
# maintenance made (build/maintenance-report/), checked against the results it was
# made from: the scenario runs first when that report is missing or older than
# what makes it (`make test` runs molecule before docs-check, so it is there).
docs-check: docs maintenance-report
	cd "$(ROOT)" && PATH="$(DOCS_VENV)/bin:$$PATH" ANSIBLE_COLLECTIONS_PATH="$(COLLECTIONS_PATH)" \
		"$(DOCS_VENV)/bin/python" -m pytest --confcutdir=tests/docsite -p no:cacheprovider tests/docsite $(PYTEST_ARGS)
	@echo "make docs-check: screenshots in build/docsite/reflink_volume.png and build/docsite/maintenance-report.png"

MAINTENANCE_REPORT := $(ROOT)/build/maintenance-report/report.html
MAINTENANCE_SOURCES = $(shell cd "$(ROOT)" && find roles/maintenance plugins extensions/molecule/maintenance \
	extensions/molecule/config.yml extensions/molecule/shared playbooks/nightly-maintenance.yml -type f ! -name '*.pyc')

.PHONY: maintenance-report
maintenance-report: $(MAINTENANCE_REPORT)

$(MAINTENANCE_REPORT): $(addprefix $(ROOT)/,$(MAINTENANCE_SOURCES))
	$(MAKE) --no-print-directory molecule MOLECULE_ARGS="--scenario-name maintenance"

# What a user installs: the tarball must hold no test output, venv or image,
# and a module must run from the installed copy.
package-test: venv collection
	ROOT="$(ROOT)" VENV_BIN="$(VENV_BIN)" COLLECTION_DIR="$(COLLECTION_DIR)" "$(ROOT)/tools/package_test.sh"

# Molecule runs from the repository root (the collection root: it finds the
# scenarios under extensions/molecule and their base config there), with the
# collection taken from build/collections, through ANSIBLE_COLLECTIONS_PATH
# (extensions/molecule/config.yml adds it after the checkout's own location).
molecule: deps venv collection
	cd "$(ROOT)" && PATH="$(VENV_BIN):$$PATH" ANSIBLE_COLLECTIONS_PATH="$(COLLECTIONS_PATH)" \
		"$(VENV_BIN)/molecule" test $(MOLECULE_ARGS)

# A second virtual environment with ansible-core 2.16, made once and kept
# (re-done when its requirements change), like .venv.
$(COMPAT_STAMP): $(COMPAT_REQUIREMENTS)
	@if [ -z "$(PYTHON)" ]; then echo 'make compat: no python3.11 or python3 on PATH' >&2; exit 1; fi
	@want=$$("$(PYTHON)" -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
	have=$$("$(COMPAT_VENV)/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true); \
	if [ "$$want" != "$$have" ]; then \
		echo "make compat: creating $(COMPAT_VENV) with $(PYTHON) (Python $$want)"; \
		rm -rf "$(COMPAT_VENV)"; \
		"$(PYTHON)" -m venv "$(COMPAT_VENV)"; \
	fi
	"$(COMPAT_VENV)/bin/python" -m pip install --disable-pip-version-check -q -r "$(COMPAT_REQUIREMENTS)"
	touch "$@"

# The Python 3.13 run looks for an interpreter that really is 3.13 (a pyenv
# shim of an inactive version is not): $(PYTHON313), pyenv's versions, PATH.
compat: deps venv collection $(COMPAT_STAMP)
	cd "$(ROOT)" && ANSIBLE_COLLECTIONS_PATH="$(COLLECTIONS_PATH)" \
		extensions/molecule/compat.sh "ansible-core 2.16" "$(COMPAT_VENV)/bin"
	@cd "$(ROOT)" && export ANSIBLE_COLLECTIONS_PATH="$(COLLECTIONS_PATH)"; py313=''; \
	for candidate in $(PYTHON313) "$${PYENV_ROOT:-$$HOME/.pyenv}"/versions/3.13*/bin/python3.13 \
			"$$(command -v python3.13 || true)" /usr/bin/python3.13 /usr/local/bin/python3.13; do \
		if [ -n "$$candidate" ] && [ -x "$$candidate" ] && \
				"$$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 13))' 2>/dev/null; then \
			py313=$$candidate; break; \
		fi; \
	done; \
	if [ -z "$$py313" ]; then \
		echo 'make compat: SKIPPED the run with modules on Python 3.13: no Python 3.13 found'; \
		echo '  (looked at PYTHON313, ~/.pyenv/versions/3.13*, python3.13 on PATH, /usr/bin, /usr/local/bin)'; \
	else \
		echo "extensions/molecule/compat.sh \"Python 3.13 modules\" $(VENV_BIN) $$py313"; \
		extensions/molecule/compat.sh "Python 3.13 modules" "$(VENV_BIN)" "$$py313"; \
	fi

demo: deps venv collection
	PATH="$(VENV_BIN):$$PATH" ANSIBLE_COLLECTIONS_PATH="$(COLLECTIONS_PATH)" "$(ROOT)/tools/demo.sh"

# Benchmarks (root): loop filesystems under /var/tmp/dom0-reflink-bench, results in
# build/bench/ (see docs/performance.md). ARGS is passed on, e.g. ARGS="--cases 1,2".
.PHONY: bench bench-quick
bench: deps venv
	cd "$(ROOT)" && PATH="$(VENV_BIN):$$PATH" "$(VENV_BIN)/python" benchmarks/run.py $(ARGS)

bench-quick: deps venv
	cd "$(ROOT)" && PATH="$(VENV_BIN):$$PATH" "$(VENV_BIN)/python" benchmarks/run.py --quick $(ARGS)

clean:
	rm -rf "$(ROOT)/build" "$(ROOT)/tests/output"
