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


"""Threads waiting for an instance's domain to stop, woken by its event.

A clean shutdown waits for the guest to power off; the event path wakes
it as soon as the domain's STOPPED event arrives, before any hold.
"""

import collections
import contextlib
import threading

from nova.virt import event as virtevent


class StopWaiters:
    """Threads waiting for an instance's domain to stop, by UUID.

    ``notify`` is called from the event path for every STOPPED event; it
    only sets Events, so it never blocks the caller.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._waiters = collections.defaultdict(list)

    @contextlib.contextmanager
    def waiting_for(self, uuid):
        """An Event set by every STOPPED of ``uuid`` while in the block."""
        waiter = self.register(uuid)
        try:
            yield waiter
        finally:
            self.unregister(uuid, waiter)

    def register(self, uuid):
        waiter = threading.Event()
        with self._lock:
            self._waiters[uuid].append(waiter)
        return waiter

    def unregister(self, uuid, waiter):
        with self._lock:
            waiters = self._waiters.get(uuid)
            if waiters is not None:
                waiters.remove(waiter)
                if not waiters:
                    del self._waiters[uuid]

    def notify(self, event):
        """Wake the waiters of a STOPPED event's instance."""
        if getattr(event, 'transition', None) != \
                virtevent.EVENT_LIFECYCLE_STOPPED:
            return
        with self._lock:
            waiters = list(self._waiters.get(event.uuid, ()))
        for waiter in waiters:
            waiter.set()

    def waiting(self):
        with self._lock:
            return sum(len(w) for w in self._waiters.values())
