# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A process that has imported the collection's modules and forks one child per module run.

Python's start-up and ``import ansible.module_utils.basic`` cost about 0.2 s and
make hundreds of system calls (ioctl TCGETS on every file it opens) before a
module does anything.  The crash matrix runs a module a few thousand times and
counts system calls to kill it at each one, so both are paid here once.

Protocol: one JSON object per line on stdin, one answer per line on stdout.

    {"op": "spawn", "module": "reflink_volume", "args": "/path/args.json",
     "out": "/path/out.txt", "stop": true}        -> {"pid": N}
        fork a child that redirects stdout and stderr to ``out``, stops itself
        with SIGSTOP if ``stop`` (so that strace can attach before it does any
        work: the caller sends SIGCONT), then runs the module's main() with
        ``args`` (an {"ANSIBLE_MODULE_ARGS": ...} file) as AnsibleModule reads it.
    {"op": "wait", "pid": N}                      -> {"exit": code} or {"signal": number}

The child is the module process exactly as ``python -m <module> args.json``
would run it, minus the import time: the same code, its own pid, its own file
descriptors, and it exits (os._exit) when main() returns or raises SystemExit.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
import traceback

MODULES = ("reflink_volume", "reflink_import", "reflink_revert", "reflink_gc", "reflink_info", "reflink_pool", "reflink_pin",
           "reflink_dedupe")
PACKAGE = "ansible_collections.dom0.reflink.plugins.modules."


def _child(module, args_path, out_path, stop):
    code = 70
    try:
        out = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(out)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        sys.argv = [module.__file__, args_path]
        if stop:
            os.kill(os.getpid(), signal.SIGSTOP)
        try:
            module.main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # anything else is reported in the output file
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def main():
    modules = {name: importlib.import_module(PACKAGE + name) for name in MODULES}
    reply = sys.stdout
    # The protocol is line-based; the children get fresh stdout/stderr (see _child).
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "spawn":
            sys.stdout.flush()
            pid = os.fork()
            if pid == 0:
                _child(modules[request["module"]], request["args"], request["out"], request.get("stop", False))
            answer = {"pid": pid}
        elif request["op"] == "wait":
            _pid, status = os.waitpid(request["pid"], 0)
            answer = {"signal": os.WTERMSIG(status)} if os.WIFSIGNALED(status) else {"exit": os.WEXITSTATUS(status)}
        else:
            answer = {"error": "unknown op %r" % request["op"]}
        reply.write(json.dumps(answer) + "\n")
        reply.flush()


if __name__ == "__main__":
    main()
