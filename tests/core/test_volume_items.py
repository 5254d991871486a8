# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The keys of a reflink_volume ``volumes`` item: what the core checks is what the module documents.

Ansible does not check the items (see ITEM_OPTIONS in _tasks/volume.py for why), so its
sanity test cannot compare them with the documented suboptions; this test does.
"""

from __future__ import annotations

import yaml

from ansible_collections.dom0.reflink.plugins.module_utils._tasks.volume_batch import ITEM_OPTIONS
from ansible_collections.dom0.reflink.plugins.modules import reflink_volume


def test_item_options_are_the_documented_suboptions():
    documented = yaml.safe_load(reflink_volume.DOCUMENTATION)["options"]["volumes"]["suboptions"]
    assert sorted(documented) == sorted(ITEM_OPTIONS)
    for key, spec in ITEM_OPTIONS.items():
        doc = documented[key]
        assert doc["type"] == spec["type"], key
        assert doc.get("required", False) == spec.get("required", False), key
        assert doc.get("choices") == spec.get("choices"), key
        assert "default" not in doc, "%s: an omitted key takes the task's value, not a default of its own" % key
