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

"""Fixtures shared by the plugin's tests."""

import fixtures
from nova.virt.libvirt import host as nova_host

from nova_lifecycle import concurrency

# Nova's own method, taken before any test's harness mocks it.
_INIT_EVENTS = nova_host.Host._init_events


class NoThreadLeftBehind(fixtures.Fixture):
    """Fails the test if a plugin thread it started is still alive.

    Add it first so that its check runs after every other cleanup.
    """

    def _setUp(self):
        self._before = set(concurrency.plugin_threads())
        self.addCleanup(self._check)

    def _check(self):
        left = [name for name in concurrency.plugin_threads()
                if name not in self._before]
        if left:
            raise AssertionError('plugin threads left running: %s'
                                 % ', '.join(left))


class LibvirtEvents(fixtures.Fixture):
    """libvirt events on, as in nova-compute: ``Host._init_events`` put back.

    Nova's test harness mocks that method so that no event thread runs in
    its tests; the plugin starts its event handling there as upstream
    does, so the plugin's tests that need events use this after Nova's
    libvirt fixture. Only for drivers whose ``cleanup_host`` ends the
    event threads (the plugin's); upstream's loop forever.
    """

    def _setUp(self):
        self.useFixture(fixtures.MonkeyPatch(
            'nova.virt.libvirt.host.Host._init_events', _INIT_EVENTS))


def wait_settled(event_path, received, timeout=10):
    """Wait until ``received`` events came in and none is pending."""
    return event_path.wait_for_counts(
        lambda c: c['received'] >= received and c['pending'] == 0, timeout)


def wait_received(event_path, received, timeout=10):
    """Wait until ``received`` events came in; True if they did."""
    return event_path.wait_for_counts(lambda c: c['received'] >= received,
                                      timeout)


def balanced(counts):
    """True when every received event is counted exactly once."""
    return not counts['double_ends'] and counts['received'] == (
        counts['delivered'] + counts['cancelled'] + counts['failed'] +
        counts['pending'])


class PathCounts:
    """An event path's counters, read through its public surface.

    The waits a test needs (``wait_received``, ``wait_settled``,
    ``wait_until``) on top of ``EventPath.status().counts`` and
    ``EventPath.wait_for_counts``.
    """

    def __init__(self, event_path):
        self._path = event_path

    def snapshot(self):
        return self._path.status().counts

    @property
    def received(self):
        return self.snapshot()['received']

    def balanced(self):
        return balanced(self.snapshot())

    def wait_until(self, predicate, timeout=None):
        return self._path.wait_for_counts(predicate, timeout)

    def wait_received(self, received, timeout=None):
        return wait_received(self._path, received, timeout)

    def wait_settled(self, received, timeout=None):
        return wait_settled(self._path, received, timeout)
