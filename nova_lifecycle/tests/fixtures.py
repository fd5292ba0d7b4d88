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

import threading

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


class CountedCalls(fixtures.Fixture):
    """Counts the calls of a method that have returned (or raised).

    ``CountedCalls('nova_lifecycle.compute.hooks.ManagerHooks.resync')``;
    ``wait_for(n)`` waits until ``n`` calls have ended.
    """

    def __init__(self, target):
        super().__init__()
        self._target = target
        self.ended = 0
        self._cond = threading.Condition()

    def _setUp(self):
        module_path, _, name = self._target.rpartition('.')
        owner = _resolve(module_path)
        method = getattr(owner, name)
        counter = self

        def counted(*args, **kwargs):
            try:
                return method(*args, **kwargs)
            finally:
                with counter._cond:
                    counter.ended += 1
                    counter._cond.notify_all()

        self.useFixture(fixtures.MonkeyPatch(self._target, counted))

    def wait_for(self, count, timeout=10):
        with self._cond:
            return self._cond.wait_for(lambda: self.ended >= count, timeout)


def _resolve(dotted):
    """The object a dotted path names (a module or a class in one)."""
    import importlib
    parts = dotted.split('.')
    for split in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module('.'.join(parts[:split]))
        except ImportError:
            continue
        for attr in parts[split:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)
