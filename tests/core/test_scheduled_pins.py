# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""A scheduled pin is made from the very file its plan saw: a commit or pruning by qubesd in between is caught.

qubesd takes none of the collection's locks.  Between the plan and the pin step a VM's
stop may rename a new clean image into place (its data a day newer) or prune the
revision the plan chose; a pin made from what the name leads to then would carry other
data under the name of the planned time, forever.  The replacement is done here for
real (a new file renamed over the name, as qubesd's commit does) between the plan and
its execution.
"""

from __future__ import annotations

import os

import pytest

from ansible_collections.dom0.reflink.plugins.module_utils._engine.executor import PlanFailed, execute
from ansible_collections.dom0.reflink.plugins.module_utils._engine.workspace import Workspace
from ansible_collections.dom0.reflink.plugins.module_utils._fs.directory import Directory
from ansible_collections.dom0.reflink.plugins.module_utils._plans.schedule import parse_schedule
from ansible_collections.dom0.reflink.plugins.module_utils._plans.scheduled_pins import plan_volume_schedule
from ansible_collections.dom0.reflink.plugins.module_utils._plans.volume import VolumePlanner
from ansible_collections.dom0.reflink.plugins.module_utils._base.names import parse_vid
from ansible_collections.dom0.reflink.plugins.module_utils._state.files import read_volume
from ansible_collections.dom0.reflink.plugins.module_utils._state.surroundings import Surroundings

VID = parse_vid("appvms/work/private")
T_CLEAN = 1772442000          # 2026-03-02T09:00:00Z
T_REVISION = 1772355600       # 2026-03-01T09:00:00Z


def write(path, data, mtime):
    with open(path, "wb") as handle:
        handle.write(data)
        os.fsync(handle.fileno())
    os.chmod(path, 0o600)
    os.utime(path, (mtime, mtime))


@pytest.fixture
def pool(btrfs_dir):
    vm_dir = btrfs_dir / "appvms" / "work"
    vm_dir.mkdir(parents=True)
    (btrfs_dir / "vm-templates").mkdir()
    write(vm_dir / "private.img", b"clean" * 1000, T_CLEAN)
    write(vm_dir / "private.img.1@2026-03-01T09:00:00Z", b"revision" * 1000, T_CLEAN)
    return btrfs_dir


def plan(pool_dir, workspace):
    files = read_volume(workspace.vm_dir, VID)
    planner = VolumePlanner(files, Surroundings.read(str(pool_dir.path)), workspace.vm_dir, workspace.prefix_dir)
    return plan_volume_schedule(planner, parse_schedule({"daily": 2}), False, [])


def pins_and_tempfiles(vm_dir):
    return sorted(name for name in os.listdir(vm_dir) if ".pin-" in name)


@pytest.mark.parametrize("replaced", ["private.img", "private.img.1@2026-03-01T09:00:00Z"])
def test_a_source_replaced_after_the_plan_is_not_pinned(pool, replaced):
    vm_dir = pool / "appvms" / "work"
    with Directory.open_pool(str(pool)) as pool_dir, Workspace(pool_dir, VID) as workspace:
        workspace.open_vm_dir()
        scheduled = plan(pool_dir, workspace)
        assert [made.name for made in scheduled.result.pin] == ["auto-20260302t090000", "auto-20260301t090000"]
        # qubesd's commit: new data renamed over the name, with the same mtime even (only the inode tells).
        write(vm_dir / "new~qubesd", b"newer data" * 1000, os.stat(vm_dir / replaced).st_mtime)
        os.rename(vm_dir / "new~qubesd", vm_dir / replaced)
        with pytest.raises(PlanFailed, match="%s changed while the task ran .*no pin was made of it" % replaced):
            execute(scheduled.actions, workspace)
    names_left = pins_and_tempfiles(vm_dir)
    # The pin of the other image may be made (the step before it); the replaced one's is not, and no tempfile stays.
    assert all("~" not in name for name in names_left)
    if replaced == "private.img":
        assert names_left == []
    else:
        assert names_left == ["private.img.pin-auto-20260302t090000"]


def test_an_unchanged_source_is_pinned(pool):
    vm_dir = pool / "appvms" / "work"
    with Directory.open_pool(str(pool)) as pool_dir, Workspace(pool_dir, VID) as workspace:
        workspace.open_vm_dir()
        execute(plan(pool_dir, workspace).actions, workspace)
    assert pins_and_tempfiles(vm_dir) == ["private.img.pin-auto-20260301t090000", "private.img.pin-auto-20260302t090000"]
    assert (vm_dir / "private.img.pin-auto-20260301t090000").read_bytes() == b"revision" * 1000
    assert os.stat(vm_dir / "private.img.pin-auto-20260301t090000").st_mtime == T_REVISION
