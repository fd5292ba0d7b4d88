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

"""The Nova shapes the plugin's release adapters assume, per release.

Each drift test fails when the installed Nova moves away from what an
adapter was written for, so the adapter is revisited rather than silently
wrong. Nova 31 (2025.1) and 32 (2025.2) run libvirt's events in the Host
itself, under eventlet only; nova 33 moved them into a
``LibvirtEventHandler`` per concurrency mode.
"""

from importlib import metadata
import inspect
import threading

import fixtures
from nova.compute import manager as compute_manager
from nova import manager as nova_manager
from nova import monkey_patch
from nova import utils
from nova.virt.libvirt import host as nova_host

from nova_lifecycle.compute import hooks
from nova_lifecycle import concurrency
from nova_lifecycle.tests import base
from nova_lifecycle.virt import host as lifecycle_host

NOVA_MAJOR = int(metadata.version('nova').split('.')[0])


def _names(function):
    """Global and attribute names a function's code uses."""
    return set(function.__code__.co_names)


class ConcurrencyDriftTest(base.TestCase):
    """``concurrency.patch_nova`` and ``threading_mode`` per release."""

    def test_drift_monkey_patch_and_mode_functions(self):
        """Nova 31 has neither ``patch()`` nor the mode function."""
        self.assertEqual(NOVA_MAJOR >= 32, hasattr(monkey_patch, 'patch'))
        self.assertEqual(NOVA_MAJOR >= 32,
                         hasattr(utils, 'concurrency_mode_threading'))

    def test_threading_mode_is_the_patching(self):
        if concurrency.threading_mode():
            return self.assertIs(threading.Thread,
                                 concurrency.native_threading().Thread)
        from eventlet import patcher
        self.assertTrue(patcher.is_monkey_patched('thread'))

    def test_patch_nova_is_safe_to_call_again(self):
        mode = concurrency.threading_mode()
        concurrency.patch_nova()
        self.assertEqual(mode, concurrency.threading_mode())


class HostModelDriftTest(base.TestCase):
    """Which Host ``lifecycle_host.adopt`` works with."""

    def test_drift_the_release_has_the_expected_host(self):
        self.assertEqual(NOVA_MAJOR >= 33,
                         lifecycle_host.HOST_HAS_EVENT_HANDLER)

    if lifecycle_host.HOST_HAS_EVENT_HANDLER:
        def test_drift_host_delegates_to_its_event_handler(self):
            Host = nova_host.Host
            self.assertIn('_event_handler', _names(Host.__init__))
            self.assertIn('_event_handler', _names(Host._close_callback))
            self.assertTrue(callable(Host._connection_closed))
            self.assertFalse(hasattr(Host, '_init_events_pipe'))
    else:
        def test_drift_legacy_host_runs_the_events_itself(self):
            """The seams ``_adopt_legacy`` replaces, as nova 31/32 use them."""
            Host = nova_host.Host
            self.assertFalse(hasattr(Host, '_connection_closed'))
            self.assertNotIn('_event_handler', _names(Host.__init__))
            self.assertLessEqual(
                {'_init_events_pipe', '_native_thread', '_dispatch_thread',
                 '_conn_event_thread'}, _names(Host._init_events))
            self.assertLessEqual({'virEventRegisterDefaultImpl',
                                  '_init_events'},
                                 _names(Host.initialize))
            for callback in (Host._close_callback,
                             Host._event_device_removed_callback,
                             Host._event_device_removal_failed_callback):
                self.assertIn('_queue_event', _names(callback))
            self.assertLessEqual(
                {'_wrapped_conn', '_wrapped_conn_lock',
                 '_queue_conn_event_handler'}, _names(Host._dispatch_events))
            self.assertIn('spawn_after', _names(Host._event_emit_delayed))

        def test_legacy_close_of_the_current_connection(self):
            host = nova_host.Host('qemu:///system')
            conn = object()
            host._wrapped_conn = conn
            queued = self.useFixture(fixtures.MockPatchObject(
                host, '_queue_conn_event_handler')).mock
            lifecycle_host._legacy_connection_closed(host, object(), False,
                                                     'old')
            self.assertIs(conn, host._wrapped_conn)
            queued.assert_not_called()
            lifecycle_host._legacy_connection_closed(host, conn, False,
                                                     'lost')
            self.assertIsNone(host._wrapped_conn)
            queued.assert_called_once_with(False, 'lost')


class ManagerDriftTest(base.TestCase):
    """The compute manager's seams ``compute.hooks`` uses, per release."""

    def test_drift_the_sync_step_the_plugin_replaces(self):
        """Same per-instance step and decision table on every release."""
        Manager = compute_manager.ComputeManager
        self.assertEqual(
            ['self', 'context', 'db_instance'],
            list(inspect.signature(
                Manager._query_driver_power_state_and_sync).parameters))
        self.assertEqual(
            ['self', 'context', 'db_instance', 'vm_power_state',
             'use_slave'],
            list(inspect.signature(
                Manager._sync_instance_power_state).parameters))
        self.assertIn('_query_driver_power_state_and_sync',
                      _names(Manager._sync_power_states) |
                      _nested_names(Manager._sync_power_states))

    def test_drift_graceful_shutdown_arrived_in_33(self):
        self.assertEqual(NOVA_MAJOR >= 33, hooks.has_graceful_shutdown(
            compute_manager.ComputeManager.__new__(
                compute_manager.ComputeManager)))

    def test_drift_shutdown_in_progress_arrived_in_34(self):
        """``hooks.shutdown_began`` reads the flag nova 34 sets."""
        self.assertEqual(NOVA_MAJOR >= 34, hasattr(
            nova_manager.Manager, 'set_shutdown_in_progress'))


def _nested_names(function):
    """Names used by the functions defined inside ``function``, at depth."""
    found, codes = set(), [function.__code__]
    while codes:
        for const in codes.pop().co_consts:
            if inspect.iscode(const):
                found |= set(const.co_names)
                codes.append(const)
    return found


class ConcurrencyModeLineTest(base.TestCase):
    """One line when nova-compute runs native threads before nova 33."""

    def setUp(self):
        super().setUp()
        self.log = self.useFixture(fixtures.FakeLogger(
            name='nova_lifecycle.virt.host'))

    def check(self, threads):
        self.useFixture(fixtures.MockPatch(
            'nova_lifecycle.concurrency.threading_mode',
            return_value=threads))
        return lifecycle_host.check_concurrency_mode()

    def test_eventlet_is_fine_on_every_release(self):
        self.assertTrue(self.check(threads=False))
        self.assertEqual('', self.log.output)

    def test_native_threads(self):
        supported = lifecycle_host.HOST_HAS_EVENT_HANDLER
        self.assertEqual(supported, self.check(threads=True))
        said = ('runs nova-compute under eventlet only: native threading '
                '(OS_NOVA_DISABLE_EVENTLET_PATCHING=true) is not available '
                'on this release')
        self.assertEqual(0 if supported else 1, self.log.output.count(said),
                         self.log.output)
