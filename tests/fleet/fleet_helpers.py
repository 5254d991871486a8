# Copyright: dom0.reflink contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the fleet suite's fixtures (conftest.py) and tests (test_fleet.py) agree on."""

from __future__ import annotations

MIB = 1024 * 1024
FLEET_USER = 'reflink-fleet'

# (inventory name, sshd address, filesystem of its pool)
HOSTS = (('fleet1', '127.0.0.2', 'btrfs'), ('fleet2', '127.0.0.3', 'btrfs'), ('fleet3', '127.0.0.4', 'xfs'))

# What the play makes of each host's source image (see fleet.yml).
SRC_SIZE = 16 * MIB
PRIVATE_SIZE = 64 * MIB
CLONE_SIZE = 24 * MIB
# A tempfile of a volume no VM has any more, two hours old: gc must remove it (min_age 1h).
STALE_TEMPFILE = 'appvms/old/private.img~fleetold'
