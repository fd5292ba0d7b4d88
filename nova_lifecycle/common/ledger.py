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

"""Counts where every event ended, so that none can vanish unnoticed.

Each event received gets an :class:`Entry` from :meth:`EventLedger.open`
(with the time it came in, so the age of the oldest pending event is known);
the entry ends exactly once: delivered, cancelled (with a reason) or
failed (with the error's type). A second end of the same entry is refused
and counted as a mistake of the owner (``double_ends``), never as a second
outcome. Until it ends the event is pending, and ``pending`` is counted on
its own, not derived, so ``received == delivered + cancelled + failed +
pending`` is a real check.
"""

import collections
import threading
import time


class Entry:
    """One event's place in the ledger; ends once.

    ``retries``: how many times its owner tried the event again after a
    failure (the owner counts; the ledger only keeps the number).
    """

    __slots__ = ('_ledger', '_open', 'opened_at', 'retries')

    def __init__(self, ledger, opened_at):
        self._ledger = ledger
        self._open = True
        self.opened_at = opened_at
        self.retries = 0

    def deliver(self):
        """The event reached its handler. False if it had already ended."""
        return self._ledger._end(self, 'delivered', None)

    def cancel(self, reason):
        """The event was dropped on purpose, for ``reason``."""
        return self._ledger._end(self, 'cancelled', reason)

    def fail(self, error):
        """The event could not be handled: ``error``."""
        return self._ledger._end(self, 'failed', type(error).__name__)


class EventLedger:
    """The counters, and a condition observers can wait on."""

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        # Open entries, oldest first (dicts keep insertion order).
        self._open_entries = {}
        self._cond = threading.Condition()
        self._received = 0
        self._pending = 0
        self._delivered = 0
        self._double_ends = 0
        self._cancelled = collections.Counter()
        self._failed = collections.Counter()

    def open(self):
        """Count one more event received; its :class:`Entry`."""
        entry = Entry(self, self._clock())
        with self._cond:
            self._received += 1
            self._pending += 1
            self._open_entries[id(entry)] = entry
            self._cond.notify_all()
        return entry

    def _end(self, entry, outcome, key):
        with self._cond:
            if not entry._open:
                self._double_ends += 1
                return False
            entry._open = False
            self._open_entries.pop(id(entry), None)
            self._pending -= 1
            if outcome == 'delivered':
                self._delivered += 1
            elif outcome == 'cancelled':
                self._cancelled[key] += 1
            else:
                self._failed[key] += 1
            self._cond.notify_all()
        return True

    def snapshot(self):
        """A consistent copy of the counters as a plain dict."""
        with self._cond:
            return self._snapshot_locked()

    def _snapshot_locked(self):
        return {
            'received': self._received,
            'delivered': self._delivered,
            'cancelled': sum(self._cancelled.values()),
            'failed': sum(self._failed.values()),
            'pending': self._pending,
            'cancelled_by_reason': dict(self._cancelled),
            'failed_by_error': dict(self._failed),
            'double_ends': self._double_ends,
            'oldest_pending_age': (
                self._clock() -
                next(iter(self._open_entries.values())).opened_at
                if self._open_entries else None),
        }

    def wait_until(self, predicate, timeout=None):
        """Wait until ``predicate(snapshot)`` holds; True if it did.

        For observers that must follow the counters without polling: the
        tests, the main job and the benchmarks.
        """
        with self._cond:
            return self._cond.wait_for(
                lambda: predicate(self._snapshot_locked()), timeout)
