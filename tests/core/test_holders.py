# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""gc's walk of /proc/*/fd: matched by device and inode, and the races of a live /proc."""

from __future__ import annotations

import os
import subprocess
import sys

from ansible_collections.dom0.reflink.plugins.module_utils._fs import holders


def identity(path):
    st = os.stat(path)
    return (st.st_dev, st.st_ino)


def test_a_fake_proc_with_the_races_of_a_real_one(tmp_path):
    wanted = tmp_path / "import.img"
    other = tmp_path / "other.img"
    for path in (wanted, other):
        path.write_bytes(b"x")
    proc = tmp_path / "proc"
    # pid 10 holds the wanted file twice and another file; pid 11 closed its fd meanwhile (a dangling
    # link); pid 12 exited between the listing of /proc and the listing of its fd/; pid 13 holds the
    # wanted file under another name (renamed since it was opened) and its comm is gone.
    for pid, links in {"10": {"3": wanted, "4": wanted, "5": other}, "11": {"3": tmp_path / "gone"},
                       "13": {"7": tmp_path / "renamed.img"}}.items():
        (proc / pid / "fd").mkdir(parents=True)
        for fd, target in links.items():
            os.symlink(target, proc / pid / "fd" / fd)
    (proc / "12").mkdir()
    (proc / "self").mkdir()
    (proc / "10" / "comm").write_text("qubesd\n")
    os.link(wanted, tmp_path / "renamed.img")
    found = holders.open_holders([identity(wanted)], proc=str(proc))
    assert found == {identity(wanted): [(10, "qubesd"), (13, "?")]}
    assert holders.describe_holders(found[identity(wanted)]) == "pid 10 (qubesd), pid 13 (?)"
    assert holders.open_holders([], proc=str(proc)) == {}
    assert holders.open_holders([identity(wanted)], proc=str(tmp_path / "no-proc")) == {}


def test_the_real_proc_finds_a_child_and_never_this_process(tmp_path):
    held = tmp_path / "held.img"
    held.write_bytes(b"data")
    own = os.open(held, os.O_RDONLY)
    child = subprocess.Popen([sys.executable, "-c", "import sys, time\nf = open(sys.argv[1], 'r+b')\n"
                              "print('open', flush=True)\ntime.sleep(60)\n", str(held)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "open"
        found = holders.open_holders([identity(held)])
        with open("/proc/%d/comm" % child.pid, encoding="utf-8") as handle:
            command = handle.read().strip()
        assert found == {identity(held): [(child.pid, command)]}
    finally:
        child.kill()
        child.wait()
        os.close(own)
    assert holders.open_holders([identity(held)]) == {}
