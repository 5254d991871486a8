# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The role dom0.reflink.pool through ansible-playbook: its one batch task, check mode, a bad item."""

from __future__ import annotations

import json
import os
import re
import subprocess

from module_helpers import MIB, make_pool, make_volume, pool_listing, put_file

BATCH_TASK = "Create, grow or remove the volumes"


def run_role(ansible_env, work, pool, volumes, check=False):
    """Run the role once; returns (exit status, output, the role's pool_volume_results or None)."""
    saved = work / "results.json"
    saved.unlink(missing_ok=True)
    playbook = work / "role.yml"
    playbook.write_text(json.dumps([{
        "hosts": "localhost", "gather_facts": False,
        "roles": [{"role": "dom0.reflink.pool", "vars": {"pool_path": str(pool), "pool_volumes": volumes}}],
        "post_tasks": [{"name": "save what the role reports", "check_mode": False, "changed_when": False,
                        "ansible.builtin.copy": {"content": "{{ pool_volume_results | to_json }}",
                                                 "dest": str(saved), "mode": "0600"}}],
    }]))
    cmd = ["ansible-playbook", "-i", "localhost,", "-c", "local", str(playbook)] + (["--check"] if check else [])
    proc = subprocess.run(cmd, env=ansible_env, capture_output=True, text=True, timeout=600, check=False)
    results = json.loads(saved.read_text()) if saved.exists() else None
    return proc.returncode, proc.stdout + proc.stderr, results


def recap_changed(output):
    """changed= of localhost in the play recap."""
    return int(re.search(r"localhost\s*:.*changed=(\d+)", output).group(1))


def test_role_check_mode_equals_the_real_run_and_rerun_changes_nothing(btrfs_dir, ansible_env, tmp_path):
    pool = make_pool(btrfs_dir)
    make_volume(pool, "appvms/grow/private", size=4 * MIB)
    make_volume(pool, "appvms/old/private")
    src = btrfs_dir / "net.img"
    put_file(src, 8 * MIB, [(0, 4096)])
    volumes = [{"vid": "appvms/grow/private", "size": "8M"},
               {"vid": "appvms/new/private", "size": "2M"},
               {"vid": "appvms/net/private", "src": str(src)},
               {"vid": "appvms/old/private", "state": "absent"}]

    before = pool_listing(pool)
    status, output, check = run_role(ansible_env, tmp_path, pool, volumes, check=True)
    assert status == 0, output
    assert pool_listing(pool) == before
    status, output, real = run_role(ansible_env, tmp_path, pool, volumes)
    assert status == 0, output

    # One module run for every volume; in check mode the not yet imported one is left out.
    predicted, done = check["volumes"], real["volumes"]
    # Those without an import first, in the order given, then the imported one.
    assert [item["vid"] for item in done] == [
        "appvms/grow/private", "appvms/new/private", "appvms/old/private", "appvms/net/private"]
    assert [item["vid"] for item in predicted] == ["appvms/grow/private", "appvms/new/private", "appvms/old/private"]
    for item in predicted:
        twin = next(other for other in done if other["vid"] == item["vid"])
        assert twin == item   # actions with "(reflink)" too: check mode knows the pool
    assert os.path.getsize(pool / "appvms/grow/private.img") == 8 * MIB
    assert os.path.getsize(pool / "appvms/net/private.img") == 8 * MIB
    assert not (pool / "appvms" / "old").exists()

    after = pool_listing(pool)
    status, output, rerun = run_role(ansible_env, tmp_path, pool, volumes)
    assert status == 0 and recap_changed(output) == 0, output
    assert [item["changed"] for item in rerun["volumes"]] == [False] * 4
    assert pool_listing(pool) == after


def test_role_with_a_bad_item_changes_none_of_the_others(btrfs_dir, ansible_env, tmp_path):
    pool = make_pool(btrfs_dir)
    make_volume(pool, "appvms/a/private", size=4 * MIB)
    make_volume(pool, "appvms/d/private", size=8 * MIB)
    volumes = [{"vid": "appvms/a/private", "size": "8M"},
               {"vid": "appvms/b/private", "size": "2M"},
               {"vid": "appvms/c/private", "size": "2M"},
               {"vid": "appvms/d/private", "size": "4M"}]    # a shrink, not allowed
    before = pool_listing(pool)
    status, output, results = run_role(ansible_env, tmp_path, pool, volumes)
    assert status != 0 and results is None, output
    task = output[output.index("TASK [dom0.reflink.pool : %s]" % BATCH_TASK):]
    assert re.search(r'\nfatal: \[localhost\]: FAILED! => .*"changed": false', task), output
    assert "volumes item 4 (appvms/d/private): refusing to shrink" in output
    assert pool_listing(pool) == before
