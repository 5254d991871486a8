# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Offline stand-in for the pip bootstrap script that ansible-test downloads.

ansible-test bootstraps pip into each empty virtual environment it creates by
running a cached "get-pip" script (``~/.ansible/test/cache/get_pip_<ver>.py``)
with the interpreter of that environment and arguments such as::

    --disable-pip-version-check pip==24.2 --no-setuptools --no-wheel

When the cache file is missing it tries to download it from a host that is not
reachable here.  The Makefile copies this file into the cache instead.  It:

1. installs the pip bundled with CPython (``python -m ensurepip``) if the
   interpreter has no pip yet;
2. runs ``python -m pip install <arguments>``, dropping the options that only
   the real bootstrap script knows (``--no-setuptools``, ``--no-wheel``).

Only the standard library is used.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys

# Options understood by the upstream bootstrap script but not by "pip install".
BOOTSTRAP_ONLY_OPTIONS = frozenset(('--no-setuptools', '--no-wheel'))


def have_pip() -> bool:
    """Tell whether the running interpreter can import pip."""
    return importlib.util.find_spec('pip') is not None


def pip_install_arguments(argv: list[str]) -> list[str]:
    """Return the arguments for "pip install", leaving out bootstrap-only options."""
    return [arg for arg in argv if arg not in BOOTSTRAP_ONLY_OPTIONS]


def main(argv: list[str] | None = None) -> int:
    """Entry point: bootstrap pip, then pip install the requested packages."""
    args = sys.argv[1:] if argv is None else argv
    python = sys.executable

    if not have_pip():
        result = subprocess.run([python, '-m', 'ensurepip', '--default-pip'], check=False)
        if result.returncode:
            print('get_pip.py: "%s -m ensurepip" failed with status %d' % (python, result.returncode), file=sys.stderr)
            return result.returncode

    packages = pip_install_arguments(args)
    if not [arg for arg in packages if not arg.startswith('-')]:
        # Nothing to install: having pip is all that was asked for.
        return 0

    return subprocess.run([python, '-m', 'pip', 'install'] + packages, check=False).returncode


if __name__ == '__main__':
    sys.exit(main())
