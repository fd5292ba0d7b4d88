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

"""Nova's own power-off never looks like an unexpected stop.

The REST API stops a server whose guest takes its time to honour the ACPI
request, or ignores it until Nova destroys the domain. In the middle of
that power-off Nova's periodic ``_sync_power_states`` runs, in the order
that could hurt most: it read the database rows before the stop, its bulk
hypervisor query sees the guest still running, and its per-instance step
runs under the instance's lock right after ``stop_instance`` released it,
when the row says STOPPED. Trusting that query would make Nova
``force_stop()`` the instance; lifecycle events also arrive meanwhile.
There must be no stop() or force_stop() but the REST API's own, and the
server must end SHUTOFF.

Here the listed row (ACTIVE, running) and the bulk query agree, so the
plugin's step settles the instance without reading the row or deciding.
``PowerOffDuringSyncReadAgainTest`` runs the same with nothing settled, the
path of an instance whose listed row and query disagree: the step then
reads the row (STOPPED), and the domain again because the query differs.
"""

import threading

import fixtures
from nova.compute import power_state
from nova.tests.fixtures import libvirt as fakelibvirt

from nova_lifecycle.eventpath import libvirt_events
from nova_lifecycle.tests.functional import base
from nova_lifecycle.tests.functional import shutdown_fixtures

SUSPENDED_IOERROR = 2
RESUMED_UNPAUSED = 0


class PowerOffDuringSyncTest(base.LifecycleTestBase):

    # Whether the sync's step reads the row and hands Nova's decision
    # table the domain's state read again.
    READS_AGAIN = False

    def setUp(self):
        super().setUp()
        self.guests = self.useFixture(shutdown_fixtures.AcpiGuests())
        self.loop = self.useFixture(shutdown_fixtures.EventsOnLibvirtLoop())
        self.start_lifecycle_compute()
        self.loop.attach(self.connection)
        self.server = self._create_server(networks='none')
        self.uuid = self.server['id']
        self.wait_for_no_pending()
        self.api_calls.reset()
        self.sync_decisions = self._record_sync_decisions()

    def _record_sync_decisions(self):
        """Power states the periodic sync handed to Nova's decision table.

        The sync's step passes ``use_slave=True``; the lifecycle event
        handler, the other caller, does not.
        """
        decisions = []
        decide = self.manager._sync_instance_power_state

        def recording(context, db_instance, vm_power_state,
                      use_slave=False):
            if use_slave:
                decisions.append((db_instance.uuid, vm_power_state))
            return decide(context, db_instance, vm_power_state,
                          use_slave=use_slave)

        self.manager._sync_instance_power_state = recording
        self.addCleanup(delattr, self.manager, '_sync_instance_power_state')
        return decisions

    def start_periodic_sync(self):
        """Nova's periodic sync, stopped right before its bulk query.

        It has read the database rows (the server ACTIVE, no task).
        """
        held = self.useFixture(shutdown_fixtures.HeldCall(
            self.driver, 'get_num_instances'))
        thread = threading.Thread(
            target=self.manager._sync_power_states,
            args=(self.admin_context(),), name='test-periodic-sync')
        thread.start()
        self.addCleanup(thread.join, base.WAIT)
        self.assertTrue(held.started.wait(base.WAIT))
        return held, thread

    def run_sync_in_the_middle(self, held, thread):
        """The bulk query now, while Nova's power-off waits for the guest."""
        self.assertEqual(base.RUNNING, self.domain(self.server)._state)
        self.assertEqual(1, self.driver.event_path.status().stop_waiters)
        held.proceed.set()
        thread.join(base.WAIT)
        self.assertFalse(thread.is_alive())
        self.assertEqual(
            power_state.RUNNING,
            self.driver._recent_power_states().power_state(self.uuid))
        # Its per-instance step waits for the instance's lock.
        self.assertIn(self.uuid, self.manager._syncs_in_progress)

    def emit(self, event, detail):
        self.connection._emit_lifecycle(self.domain(self.server), event,
                                        detail)

    def assert_stopped_by_nova_alone(self):
        self.wait_for_status(self.server, 'SHUTOFF')
        self.assertNotEqual(base.RUNNING, self.domain(self.server)._state)
        self.assertTrue(base.wait_until(
            lambda: not self.manager._syncs_in_progress))
        expected = ([(self.uuid, power_state.SHUTDOWN)] if self.READS_AGAIN
                    else [])
        self.assertEqual(expected, self.sync_decisions)
        self.wait_for_no_pending()
        self.assertEqual([self.uuid], self.api_calls.made('stop'))
        self.assertEqual([], self.api_calls.made(
            'stop', by=self.manager.compute_api))
        self.assertEqual([], self.api_calls.made('force_stop'))
        self.assertEqual(('SHUTOFF', None), self.server_status(self.server))

    def log_lines(self, text):
        return [line for line in self.stdlog.logger.output.splitlines()
                if text in line]

    def test_guest_slow_to_honour_acpi(self):
        sync, sync_thread = self.start_periodic_sync()
        self.guests.slow(self.uuid, after=1.5, held=True)

        self.api.post_server_action(self.uuid, {'os-stop': None})
        self.assertTrue(self.guests.wait_for_press(self.uuid))
        self.run_sync_in_the_middle(sync, sync_thread)
        # The guest pauses on an I/O error and resumes meanwhile.
        self.emit(libvirt_events.DOMAIN_EVENT_SUSPENDED, SUSPENDED_IOERROR)
        self.emit(libvirt_events.DOMAIN_EVENT_RESUMED, RESUMED_UNPAUSED)
        self.guests.release(self.uuid)

        self.assert_stopped_by_nova_alone()
        self.assertEqual(1, self.guests.presses(self.uuid))
        self.assertEqual(['STARTED_BOOTED', 'SUSPENDED_IOERROR',
                          'RESUMED_UNPAUSED', 'SHUTDOWN_GUEST',
                          'STOPPED_SHUTDOWN'], self.events.of(self.server))
        self.assertEqual(1, len(self.log_lines('woken by its event')))

    def test_guest_ignoring_acpi_until_destroyed(self):
        self.flags(shutdown_timeout=3)
        self.flags(shutdown_retry_interval=1, group='compute')
        sync, sync_thread = self.start_periodic_sync()
        self.guests.ignoring(self.uuid)

        self.api.post_server_action(self.uuid, {'os-stop': None})
        self.assertTrue(self.guests.wait_for_press(self.uuid))
        self.run_sync_in_the_middle(sync, sync_thread)
        # The guest restarts on the power button instead of shutting down
        # (an OS set to do so): the power-off is woken, finds the domain
        # running, and goes on pressing.
        self.emit(
            libvirt_events.DOMAIN_EVENT_SHUTDOWN,
            libvirt_events.DOMAIN_EVENT_SHUTDOWN_GUEST)
        self.emit(
            libvirt_events.DOMAIN_EVENT_STOPPED,
            libvirt_events.DOMAIN_EVENT_STOPPED_SHUTDOWN)
        self.emit(libvirt_events.DOMAIN_EVENT_STARTED, 0)
        self.assertTrue(self.guests.wait_for_press(self.uuid, count=2))

        self.assert_stopped_by_nova_alone()
        self.assertEqual(fakelibvirt.VIR_DOMAIN_SHUTOFF,
                         self.domain(self.server)._state)
        self.assertIn(self.guests.presses(self.uuid), (2, 3))
        self.assertEqual(['SHUTDOWN_HOST', 'STOPPED_DESTROYED'],
                         self.events.of(self.server)[-2:])
        self.assertEqual(1, len(self.log_lines(
            'Instance failed to shutdown in 3 seconds')))
        # The restart's STOPPED was superseded by its STARTED.
        self.assertGreaterEqual(self.stopped_cancelled(), 1)


class PowerOffDuringSyncReadAgainTest(PowerOffDuringSyncTest):

    # The row is read (STOPPED), the domain read again: off, as the
    # database says; Nova's table has nothing to do.
    READS_AGAIN = True

    def setUp(self):
        self.useFixture(fixtures.MonkeyPatch(
            'nova_lifecycle.compute.sync.SETTLED', {}))
        super().setUp()
