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

Each event received ends exactly once: delivered, cancelled (with a
reason) or failed (with the error's type). Until then it is pending, and
``pending`` is counted on its own, not derived, so that
``received == delivered + cancelled + failed + pending`` is a real check.
"""

import collections
import threading


class EventLedger:

    def __init__(self):
        self._lock = threading.Condition()
        self.received = 0
        self.pending = 0
        self.delivered = 0
        self.cancelled = collections.Counter()
        self.failed = collections.Counter()

    def receive(self):
        with self._lock:
            self.received += 1
            self.pending += 1
            self._lock.notify_all()

    def deliver(self):
        with self._lock:
            self.pending -= 1
            self.delivered += 1
            self._lock.notify_all()

    def cancel(self, reason):
        with self._lock:
            self.pending -= 1
            self.cancelled[reason] += 1
            self._lock.notify_all()

    def fail(self, error):
        with self._lock:
            self.pending -= 1
            self.failed[type(error).__name__] += 1
            self._lock.notify_all()

    def snapshot(self):
        """A consistent copy of the counters as a plain dict."""
        with self._lock:
            return self._snapshot_locked()

    def _snapshot_locked(self):
        return {
            'received': self.received,
            'delivered': self.delivered,
            'cancelled': sum(self.cancelled.values()),
            'failed': sum(self.failed.values()),
            'pending': self.pending,
            'cancelled_by_reason': dict(self.cancelled),
            'failed_by_error': dict(self.failed),
        }

    def balanced(self):
        """True when every received event is counted exactly once."""
        s = self.snapshot()
        return s['received'] == (s['delivered'] + s['cancelled'] +
                                 s['failed'] + s['pending'])

    def wait_settled(self, received, timeout=None):
        """Wait until ``received`` events came in and none is pending.

        :returns: True if that happened within ``timeout`` seconds.
        """
        with self._lock:
            return self._lock.wait_for(
                lambda: self.received >= received and self.pending == 0,
                timeout)

    def wait_received(self, received, timeout=None):
        """Wait until ``received`` events came in; True if they did."""
        with self._lock:
            return self._lock.wait_for(lambda: self.received >= received,
                                       timeout)

    def wait_until(self, predicate, timeout=None):
        """Wait until ``predicate(snapshot)`` holds; True if it did."""
        with self._lock:
            return self._lock.wait_for(
                lambda: predicate(self._snapshot_locked()), timeout)
