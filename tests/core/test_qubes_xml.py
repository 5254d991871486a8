# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The qubes.xml reader: pool matching, volume kinds, revisions_to_keep, refusals; the exact running check."""

from __future__ import annotations

import os
import resource
import time

import pytest

from qubes_xml_helpers import BILLION_LAUGHS, app_vm, dom0_layout, qubes_xml, reflink_pool, template_vm

from ansible_collections.dom0.reflink.plugins.module_utils._base import names
from ansible_collections.dom0.reflink.plugins.module_utils._state import qubes_xml as qx
from ansible_collections.dom0.reflink.plugins.module_utils._base.errors import InvalidArgument
from ansible_collections.dom0.reflink.plugins.module_utils._state.files import VolumeFiles, FileInfo
from ansible_collections.dom0.reflink.plugins.module_utils._state.surroundings import Surroundings


def write(tmp_path, text, name="qubes.xml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


@pytest.fixture
def pool(tmp_path):
    path = tmp_path / "pool"
    path.mkdir()
    return path


def test_dom0_layout_kinds_and_revisions(tmp_path, pool):
    found = qx.read_qubes_xml(write(tmp_path, dom0_layout(pool, pool_keep=2, private_keep=5)), str(pool))
    assert found.name == "varlibqubes"
    assert found.revisions_to_keep == 2
    kinds = {vid: (v.vm, v.volume, v.kind, v.revisions_to_keep, v.source) for vid, v in found.volumes.items()}
    assert kinds == {
        "vm-templates/fedora-42/root": ("fedora-42", "root", "origin", 2, None),
        "vm-templates/fedora-42/private": ("fedora-42", "private", "origin", 2, None),
        "vm-templates/fedora-42/volatile": ("fedora-42", "volatile", "volatile", 2, None),
        "appvms/work/root": ("work", "root", "snapshot", 2, "vm-templates/fedora-42/root"),
        "appvms/work/private": ("work", "private", "origin", 5, None),
        "appvms/work/volatile": ("work", "volatile", "volatile", 2, None),
        "appvms/disp12/root": ("disp12", "root", "snapshot", 2, "vm-templates/fedora-42/root"),
        "appvms/disp12/private": ("disp12", "private", "snapshot", 2, "appvms/work/private"),
        "appvms/disp12/volatile": ("disp12", "volatile", "volatile", 2, None),
        # vault's private volume is in the LVM pool, its kernel in linux-kernel: not listed.
        "appvms/vault/root": ("vault", "root", "snapshot", 2, "vm-templates/fedora-42/root"),
        "appvms/vault/volatile": ("vault", "volatile", "volatile", 2, None),
    }


def test_revisions_default_one_without_pool_value(tmp_path, pool):
    found = qx.read_qubes_xml(write(tmp_path, dom0_layout(pool)), str(pool))
    assert found.revisions_to_keep == 1
    assert found.volume("appvms/work/private").revisions_to_keep == 1


def test_volume_size(tmp_path, pool):
    """The size qubesd recorded, in bytes; a size that is not a non-negative integer is None (never an error)."""
    domain = template_vm("t", "p")
    domain.volumes[0].size = 10 * 1024 ** 3
    domain.volumes[1].size = "2G"
    domain.volumes[2].size = "-1"
    found = qx.read_qubes_xml(write(tmp_path, qubes_xml([reflink_pool("p", pool)], [domain])), str(pool))
    assert found.volume("vm-templates/t/root").size == 10 * 1024 ** 3
    assert found.volume("vm-templates/t/private").size is None
    assert found.volume("vm-templates/t/volatile").size is None


def test_origin_snapshot_kind(tmp_path, pool):
    domain = template_vm("t", "p")
    domain.volumes[0].snap_on_start = True
    found = qx.read_qubes_xml(write(tmp_path, qubes_xml([reflink_pool("p", pool)], [domain])), str(pool))
    assert found.volume("vm-templates/t/root").kind == "origin_snapshot"


def test_other_pool_paths_do_not_match(tmp_path, pool):
    text = qubes_xml([reflink_pool("elsewhere", tmp_path / "other"),
                      {"driver": "file", "name": "file", "dir_path": str(pool)}],
                     [app_vm("work", "elsewhere", "t")])
    assert qx.read_qubes_xml(write(tmp_path, text), str(pool)) is None


def test_pool_matched_through_symlink(tmp_path, pool):
    link = tmp_path / "link"
    link.symlink_to(pool)
    # qubes.xml names the symlink, the task the real directory; and the other way round.
    assert qx.read_qubes_xml(write(tmp_path, dom0_layout(link)), str(pool)).name == "varlibqubes"
    assert qx.read_qubes_xml(write(tmp_path, dom0_layout(pool), "b.xml"), str(link)).name == "varlibqubes"


def test_pool_matched_by_abspath(tmp_path, pool):
    assert qx.read_qubes_xml(write(tmp_path, dom0_layout(str(pool) + "/")), str(pool) + "/./").name == "varlibqubes"


def test_none_reads_nothing(tmp_path, pool):
    assert qx.read_qubes_xml("none", str(pool)) is None


def test_auto_without_default_file(monkeypatch, tmp_path, pool):
    monkeypatch.setattr(qx, "DEFAULT_PATH", str(tmp_path / "absent.xml"))
    assert qx.read_qubes_xml("auto", str(pool)) is None
    monkeypatch.setattr(qx, "DEFAULT_PATH", write(tmp_path, dom0_layout(pool)))
    assert qx.read_qubes_xml("auto", str(pool)).name == "varlibqubes"


def test_named_missing_path_fails(tmp_path, pool):
    with pytest.raises(qx.QubesXmlError, match="does not exist"):
        qx.read_qubes_xml(str(tmp_path / "absent.xml"), str(pool))


def test_truncated_file_fails(tmp_path, pool):
    text = dom0_layout(pool)
    with pytest.raises(qx.QubesXmlError, match="not well-formed"):
        qx.read_qubes_xml(write(tmp_path, text[:len(text) // 2]), str(pool))


def test_empty_file_fails(tmp_path, pool):
    with pytest.raises(qx.QubesXmlError, match="not well-formed"):
        qx.read_qubes_xml(write(tmp_path, ""), str(pool))


def test_entity_bomb_refused_quickly(tmp_path, pool):
    path = write(tmp_path, BILLION_LAUGHS.replace("/var/lib/qubes", str(pool)))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    with pytest.raises(qx.QubesXmlError, match="DOCTYPE or entity"):
        qx.read_qubes_xml(path, str(pool))
    assert time.monotonic() - started < 1
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 10 * 1024   # KiB


def test_bomb_in_utf16_refused_by_the_parser_hook(tmp_path, pool):
    # A byte search cannot see '<!DOCTYPE' in UTF-16; the expat hook stops at the declaration.
    path = tmp_path / "qubes.xml"
    path.write_bytes(BILLION_LAUGHS.replace('<?xml version="1.0"?>', '<?xml version="1.0" encoding="UTF-16"?>')
                     .encode("utf-16"))
    with pytest.raises(qx.QubesXmlError, match="DOCTYPE or entity"):
        qx.read_qubes_xml(str(path), str(pool))


def test_plain_doctype_refused(tmp_path, pool):
    text = dom0_layout(pool).replace('<qubes version="3.0">', '<!DOCTYPE qubes>\n<qubes version="3.0">')
    with pytest.raises(qx.QubesXmlError, match="DOCTYPE"):
        qx.read_qubes_xml(write(tmp_path, text), str(pool))


def test_not_qubes_root_refused(tmp_path, pool):
    with pytest.raises(qx.QubesXmlError, match="root element"):
        qx.read_qubes_xml(write(tmp_path, "<config/>"), str(pool))


def test_bad_revisions_to_keep_refused(tmp_path, pool):
    with pytest.raises(qx.QubesXmlError, match="revisions_to_keep"):
        qx.read_qubes_xml(write(tmp_path, dom0_layout(pool, private_keep="many")), str(pool))


def test_refusal_names_kind_and_origin(tmp_path, pool):
    found = qx.read_qubes_xml(write(tmp_path, dom0_layout(pool)), str(pool))
    with pytest.raises(InvalidArgument, match=r"snapshot volume of VM work.*origin vm-templates/fedora-42/root"):
        qx.refuse_qubesd_volume(found, names.parse_vid("appvms/work/root"), "import into")
    with pytest.raises(InvalidArgument, match="volatile volume of VM work"):
        qx.refuse_qubesd_volume(found, names.parse_vid("appvms/work/volatile"), "create or resize")
    qx.refuse_qubesd_volume(found, names.parse_vid("appvms/work/private"), "import into")
    qx.refuse_qubesd_volume(found, names.parse_vid("appvms/new/private"), "import into")
    qx.refuse_qubesd_volume(None, names.parse_vid("appvms/work/root"), "import into")


def test_orphan_reasons(tmp_path, pool):
    found = qx.read_qubes_xml(write(tmp_path, dom0_layout(pool)), str(pool))
    assert qx.orphan_reason(found, "appvms/work/private", None) is None
    assert "not listed in qubes.xml" in qx.orphan_reason(found, "appvms/gone/private", None)
    assert "left by a crash" in qx.orphan_reason(found, "appvms/work/root", None)
    assert qx.orphan_reason(found, "appvms/gone/private", {"appvms/gone/private"}) is None
    assert qx.orphan_reason(None, "appvms/gone/private", None) is None


def _files(vid, *image_names):
    parsed = names.parse_vid(vid)
    return VolumeFiles.from_infos(parsed, [FileInfo(name, 1, 1) for name in image_names])


def test_missing_volumes(tmp_path, pool):
    found = qx.read_qubes_xml(write(tmp_path, dom0_layout(pool)), str(pool))
    present = {"vm-templates/fedora-42/root": _files("vm-templates/fedora-42/root", "root.img"),
               "appvms/work/private": _files("appvms/work/private", "private-dirty.img")}
    assert qx.missing_volumes(found, present) == [
        {"vid": "vm-templates/fedora-42/private", "vm": "fedora-42", "volume": "private"}]
    assert qx.missing_volumes(found, present, only={"appvms/work/private"}) == []
    assert qx.missing_volumes(None, present) == []


def test_running_check_exact_with_pool_name():
    files = _files("appvms/my-vm/private", "private.img")
    escaped = names.escape_vid("varlibqubes:appvms/my-vm/private")
    assert escaped == "varlibqubes:appvms-my--vm-private"
    other_pool = names.escape_vid("other-pool:appvms/my-vm/private")
    known = Surroundings(os.sep, {}, {other_pool}, "varlibqubes")
    assert known.running_reasons(files) == []
    unknown = Surroundings(os.sep, {}, {other_pool}, None)
    assert unknown.running_reasons(files) == [
        "qubesd's running-state file /var/run/qubes/volume-running-<pool>:appvms-my--vm-private exists"]
    exact = Surroundings(os.sep, {}, {escaped, other_pool}, "varlibqubes")
    assert exact.running_reasons(files) == [
        "qubesd's running-state file /var/run/qubes/volume-running-varlibqubes:appvms-my--vm-private exists"]


def test_running_check_escapes_dashes_in_pool_name():
    files = _files("appvms/work/private", "private.img")
    running = {names.escape_vid("my-pool:appvms/work/private")}
    assert Surroundings(os.sep, {}, running, "my-pool").running_reasons(files)
    assert not Surroundings(os.sep, {}, running, "my").running_reasons(files)
