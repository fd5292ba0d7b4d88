# Licensed under the Apache License, Version 2.0 (the "License"); you may
# not use this file except in compliance with the License. You may obtain
# a copy of the License at
#
#      http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
# WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
# License for the specific language governing permissions and limitations
# under the License.

"""Which instances the driver is operating on right now.

A STOPPED event in the middle of a reboot, a resize or a power-off is
expected: the driver itself stopped the domain and usually starts it again.
Knowing which driver calls are in progress lets the event path hold such a
STOPPED for the full delay and hand a STOPPED that nothing explains (the
guest powered itself off, or crashed) to Nova after a short grace.

:mod:`nova_lifecycle.virt.tracked_methods` wraps the driver's methods
that stop or restart domains, so each call registers its instance here for
its duration.
"""

import collections
import contextlib
import threading
import time

# How long the end of an instance's last operation is remembered. A STOPPED
# caused by an operation can reach the event path after the operation
# returned (libvirt's loop or the dispatcher ran late).
REMEMBER_ENDED = 60.0

# LibvirtDriver methods during which the driver itself stops, destroys or
# restarts domains (directly or by the guest's reaction to them).
TRACKED_METHODS = (
    'spawn', 'destroy', 'reboot', 'power_off', 'power_on', 'pause',
    'unpause', 'suspend', 'resume', 'resume_state_on_host_boot', 'rescue',
    'unrescue', 'snapshot', 'trigger_crash_dump',
    'migrate_disk_and_power_off', 'finish_migration',
    'finish_revert_migration', 'live_migration',
    'post_live_migration_at_destination',
    'rollback_live_migration_at_destination',
)

# Those of them that stop a domain themselves, and whose STOPPED can thus
# reach the event path after they returned. Not spawn, power_on and the
# like: a STOPPED just after them was not caused by them.
STOPPING_METHODS = frozenset((
    'destroy', 'reboot', 'power_off', 'suspend', 'rescue', 'unrescue',
    'snapshot', 'migrate_disk_and_power_off', 'live_migration',
))


class DriverOperations:
    """Counts the driver operations in progress per instance UUID.

    ``on_idle(uuid, name)`` is called (outside the lock) when the last
    operation on an instance ends, with the name of that operation. When
    that happened stays known for ``remember`` seconds (:meth:`ended`).
    """

    def __init__(self, on_idle=None, remember=REMEMBER_ENDED,
                 clock=time.monotonic):
        self._lock = threading.Lock()
        self._active = {}
        # uuid -> (monotonic end, name), oldest first.
        self._ended = collections.OrderedDict()
        self._remember = remember
        self._clock = clock
        self._on_idle = on_idle

    @contextlib.contextmanager
    def track(self, uuid, name):
        with self._lock:
            self._active.setdefault(uuid, collections.Counter())[name] += 1
        try:
            yield
        finally:
            with self._lock:
                ops = self._active[uuid]
                ops[name] -= 1
                if ops[name] == 0:
                    del ops[name]
                idle = not ops
                if idle:
                    del self._active[uuid]
                    self._note_ended(uuid, name)
            if idle and self._on_idle is not None:
                self._on_idle(uuid, name)

    def _note_ended(self, uuid, name):
        now = self._clock()
        self._ended.pop(uuid, None)
        self._ended[uuid] = (now, name)
        horizon = now - self._remember
        while self._ended:
            oldest = next(iter(self._ended.values()))
            if oldest[0] >= horizon:
                break
            self._ended.popitem(last=False)

    def ended(self, uuid):
        """(seconds ago, name) of the last operation on ``uuid`` to end.

        None while one is in progress, or when none ended within the
        remembered window.
        """
        with self._lock:
            if uuid in self._active or uuid not in self._ended:
                return None
            at, name = self._ended[uuid]
            ago = self._clock() - at
            if ago > self._remember:
                return None
            return ago, name

    def active(self, uuid):
        """Names of the operations in progress on ``uuid`` (sorted)."""
        with self._lock:
            return sorted(self._active.get(uuid, ()))

    def busy(self):
        """{uuid: [operation names]} of every instance being operated on."""
        with self._lock:
            return {uuid: sorted(ops) for uuid, ops in self._active.items()}
