# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The role dom0.reflink.maintenance through ansible-playbook: a failed step stops nothing, and check mode writes nothing.

The whole run (pins, gc, dedupe, info, the report, idempotence) is the molecule
scenario maintenance; this is what it does not reach: a step that fails, and
check mode on a pool with work to do.
"""

from __future__ import annotations

import json
import os
import re
import subprocess

from module_helpers import MIB, T0, make_pool, make_volume, pool_listing, put_file

GONE = "appvms/gone/private"


def run_role(ansible_env, work, role_vars, check=False):
    """Run the role once; (exit status, output, the four results it registered)."""
    saved = work / "results.json"
    saved.unlink(missing_ok=True)
    playbook = work / "maintenance.yml"
    playbook.write_text(json.dumps([{
        "hosts": "localhost", "gather_facts": False,
        "tasks": [{
            "name": "run the role",
            "block": [{"name": "the role", "ansible.builtin.include_role": {"name": "dom0.reflink.maintenance"},
                       "vars": role_vars}],
            # Also when the role failed: what each step registered.
            "always": [{"name": "save what the role registered", "check_mode": False, "changed_when": False,
                        "ansible.builtin.copy": {
                            "content": "{{ {'pins': maintenance_pins | default(none), 'gc': maintenance_gc | default(none), "
                                       "'dedupe': maintenance_dedupe | default(none), "
                                       "'info': maintenance_info | default(none)} | to_json }}",
                            "dest": str(saved), "mode": "0600"}}],
        }],
    }]))
    cmd = ["ansible-playbook", "-i", "localhost,", "-c", "local", str(playbook)] + (["--check"] if check else [])
    proc = subprocess.run(cmd, env=ansible_env, capture_output=True, text=True, timeout=600, check=False)
    return proc.returncode, proc.stdout + proc.stderr, json.loads(saved.read_text()) if saved.exists() else None


def test_a_failed_step_stops_no_other_and_the_report_says_which(btrfs_dir, ansible_env, tmp_path):
    pool = make_pool(btrfs_dir)
    make_volume(pool, "appvms/work/private", size=4 * MIB, revisions=[(1, T0 - 86400)])
    stale = pool / "appvms" / "work" / "private.img~a1b2c3d4"
    put_file(stale, MIB, [(0, 4096)], mtime=T0)
    report = tmp_path / "report.html"
    role_vars = {"maintenance_pool": str(pool), "maintenance_qubes_xml": "none",
                 "maintenance_pin_vids": ["appvms/work/private", GONE], "maintenance_pin_schedule": {"daily": 2},
                 "maintenance_dedupe_enabled": False, "maintenance_report_path": str(report)}

    # Check mode: every step plans (a volume that does not exist is a warning: an earlier task may make it),
    # nothing changes, no report is written.
    before = pool_listing(pool)
    status, output, results = run_role(ansible_env, tmp_path, role_vars, check=True)
    assert status == 0 and pool_listing(pool) == before and not report.exists(), output
    assert results["pins"]["changed"] and "volume %s does not exist" % GONE in " ".join(results["pins"]["warnings"])
    assert [item["file"] for item in results["gc"]["removed"]] == ["appvms/work/private.img~a1b2c3d4"]

    status, output, results = run_role(ansible_env, tmp_path, role_vars)
    assert status != 0, output
    # The pins of the run fail as a whole (a volume that does not exist: nothing is pinned); every other step ran.
    assert results["pins"]["failed"] and "volume %s does not exist" % GONE in results["pins"]["msg"]
    assert [name for name in os.listdir(pool / "appvms" / "work") if ".pin-" in name] == []
    assert results["gc"]["changed"] and not stale.exists()
    assert results["dedupe"]["skipped"] is True
    assert not results["info"].get("failed") and results["info"]["volumes"][0]["vid"] == "appvms/work/private"
    # The role fails at its end, naming the step and its message, and the report says the same.
    message = re.search(r"maintenance of %s: (.*)" % re.escape(str(pool)), output).group(1)
    assert message.startswith("scheduled pins (reflink_pin) failed: volume %s does not exist" % GONE)
    page = report.read_text(encoding="utf-8")
    assert "Steps of this run that failed" in page and "<b>scheduled pins (reflink_pin)</b>" in page
    assert "volume %s does not exist" % GONE in page
    assert "dedupe did not run." in page and "gc: stale files and old revisions" in page
