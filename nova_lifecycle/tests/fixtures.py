"""Fixtures shared by the plugin's tests."""

import fixtures

from nova_lifecycle import concurrency


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
