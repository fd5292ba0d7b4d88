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

"""Nova's lifecycle handler, fed by the plugin: its rules as one table.

A libvirt callback goes through the plugin (translation, hold, dispatch)
into Nova's real ``ComputeManager.handle_events``. The table below is what
Nova's ``handle_lifecycle_event`` then does with each event, on Nova's
fake libvirt and with the instance read from a mocked object layer:

* the transition names a power state (STOPPED -> SHUTDOWN, STARTED and
  RESUMED -> RUNNING, PAUSED, POSTCOPY_STARTED and MIGRATION_COMPLETED ->
  PAUSED);
* Nova syncs the instance only where the domain's live state (read again,
  uncached) still is that power state: a late event changes nothing;
* during a live migration (task_state MIGRATING), POSTCOPY_STARTED and
  MIGRATION_COMPLETED activate the destination's port bindings
  (``migrate_instance_start`` with the migration in status 'running
  (post-copy)' or 'running'); without that migration record, a warning;
* an event for a deleted instance is logged at debug and ends delivered.

The decision ``_sync_instance_power_state`` takes is test_sync's table.
"""

import logging
from unittest import mock

import fixtures
from nova.compute import manager as compute_manager
from nova.compute import power_state
from nova.compute import task_states
from nova.compute import vm_states
from nova import exception
from nova import objects
from nova.tests.fixtures import libvirt as fakelibvirt

from nova_lifecycle.eventpath import libvirt_events
from nova_lifecycle.tests.unit import test_driver
from nova_lifecycle.tests.unit import test_faults

UUID = test_driver.UUID

# libvirt domain states (virDomainState), the domain's live state.
RUNNING = fakelibvirt.VIR_DOMAIN_RUNNING
PAUSED = fakelibvirt.VIR_DOMAIN_PAUSED
SHUTOFF = fakelibvirt.VIR_DOMAIN_SHUTOFF

MIGRATING = task_states.MIGRATING
POSTCOPY = 'running (post-copy)'
COMPLETED = 'running'

# (libvirt event, detail, live domain state, task_state) ->
#     (power state Nova syncs with or None, migration status whose port
#      bindings Nova activates or None)
TABLE = [
    # The transition's power state, the live state agreeing.
    ((libvirt_events.DOMAIN_EVENT_STARTED, 0, RUNNING, None), (
        power_state.RUNNING, None)),
    ((libvirt_events.DOMAIN_EVENT_RESUMED, 0, RUNNING, None), (
        power_state.RUNNING, None)),
    ((libvirt_events.DOMAIN_EVENT_SUSPENDED, 0, PAUSED, None), (
        power_state.PAUSED, None)),
    ((
        libvirt_events.DOMAIN_EVENT_STOPPED,
        libvirt_events.DOMAIN_EVENT_STOPPED_SHUTDOWN, SHUTOFF, None),
     (power_state.SHUTDOWN, None)),
    ((
        libvirt_events.DOMAIN_EVENT_STOPPED,
        libvirt_events.DOMAIN_EVENT_STOPPED_DESTROYED, SHUTOFF, None),
     (power_state.SHUTDOWN, None)),
    ((
        libvirt_events.DOMAIN_EVENT_STOPPED,
        libvirt_events.DOMAIN_EVENT_STOPPED_CRASHED, SHUTOFF, None),
     (power_state.SHUTDOWN, None)),
    # A late event: the domain has moved on, Nova leaves the instance.
    ((libvirt_events.DOMAIN_EVENT_STARTED, 0, SHUTOFF, None), (None, None)),
    ((libvirt_events.DOMAIN_EVENT_RESUMED, 0, PAUSED, None), (None, None)),
    ((libvirt_events.DOMAIN_EVENT_SUSPENDED, 0, RUNNING, None), (None, None)),
    # Live migration: post-copy and the source's end activate the
    # destination's port bindings, whether or not the state agrees.
    ((
        libvirt_events.DOMAIN_EVENT_SUSPENDED,
        libvirt_events.DOMAIN_EVENT_SUSPENDED_POSTCOPY, PAUSED, MIGRATING),
     (power_state.PAUSED, POSTCOPY)),
    ((
        libvirt_events.DOMAIN_EVENT_SUSPENDED,
        libvirt_events.DOMAIN_EVENT_SUSPENDED_POSTCOPY, RUNNING, MIGRATING),
     (None, POSTCOPY)),
    ((
        libvirt_events.DOMAIN_EVENT_SUSPENDED,
        libvirt_events.DOMAIN_EVENT_SUSPENDED_MIGRATED, PAUSED, MIGRATING),
     (power_state.PAUSED, COMPLETED)),
    # ... and only during a live migration.
    ((
        libvirt_events.DOMAIN_EVENT_SUSPENDED,
        libvirt_events.DOMAIN_EVENT_SUSPENDED_POSTCOPY, PAUSED, None),
     (power_state.PAUSED, None)),
    ((
        libvirt_events.DOMAIN_EVENT_SUSPENDED,
        libvirt_events.DOMAIN_EVENT_SUSPENDED_MIGRATED, PAUSED, None),
     (power_state.PAUSED, None)),
    # An ordinary pause during a migration binds nothing.
    ((libvirt_events.DOMAIN_EVENT_SUSPENDED, 0, PAUSED, MIGRATING), (
        power_state.PAUSED, None)),
]


class LifecycleHandlerTableTest(test_faults.FaultTestCase):

    def setUp(self):
        super().setUp()
        self.flags(stopped_event_delay=0.05, stopped_event_grace=0.01,
                   group='lifecycle')
        self.compute = compute_manager.ComputeManager()
        self.compute.driver = self.driver
        self.driver.register_event_listener(self.compute.handle_events)
        self.instance = None
        self.useFixture(fixtures.MockPatchObject(
            objects.Instance, 'get_by_uuid', side_effect=self._get_by_uuid))
        self.sync = self.useFixture(fixtures.MockPatchObject(
            self.compute, '_sync_instance_power_state')).mock
        self.migration = self.useFixture(fixtures.MockPatchObject(
            objects.Migration, 'get_by_instance_and_status')).mock
        self.bind = self.useFixture(fixtures.MockPatchObject(
            self.compute.network_api, 'migrate_instance_start')).mock
        # The source's end of a migration: libvirt's job says completed.
        self.useFixture(fixtures.MockPatch(
            'nova.virt.libvirt.guest.Guest.get_job_info',
            return_value=type('JobInfo', (), {
                'type': fakelibvirt.VIR_DOMAIN_JOB_COMPLETED})()))
        self.manager_log = self.useFixture(fixtures.FakeLogger(
            name='nova.compute.manager', level=logging.DEBUG,
            nuke_handlers=False))
        self.conn = self.start_events()
        self.dom = self.conn.defineXML(test_driver.DOMAIN_XML)
        self.instance = self._instance(None)
        counts = test_faults.Counts(self.ledger)
        self.dom.create()
        counts.wait_ended(1)

    def _instance(self, task_state):
        return objects.Instance(
            id=1, uuid=UUID, vm_state=vm_states.ACTIVE,
            power_state=power_state.RUNNING, task_state=task_state,
            host=self.compute.host, shutdown_terminate=False)

    def _get_by_uuid(self, context, uuid, expected_attrs=None,
                     use_slave=False):
        if self.instance is None or uuid != UUID:
            raise exception.InstanceNotFound(instance_id=uuid)
        return self.instance

    def handle(self, event, detail, live_state, task_state):
        """One libvirt callback, through the plugin into Nova's handler."""
        self.instance = self._instance(task_state)
        for m in (self.sync, self.migration, self.bind):
            m.reset_mock()
        self.set_state(live_state)
        counts = test_faults.Counts(self.ledger)
        self.emit(event, detail)
        return counts.wait_ended(1)

    def test_every_row_of_the_table(self):
        for (event, detail, live, task), (synced, bound) in TABLE:
            row = (libvirt_events.event_name(event, detail), live, task)
            delta = self.handle(event, detail, live, task)
            self.assertEqual(1, delta['delivered'], (row, delta))
            if synced is None:
                self.sync.assert_not_called()
            else:
                self.assertEqual(1, self.sync.call_count, row)
                _, instance, vm_power_state = self.sync.call_args.args
                self.assertEqual(UUID, instance.uuid, row)
                self.assertEqual(synced, vm_power_state, row)
            if bound is None:
                self.bind.assert_not_called()
            else:
                self.migration.assert_called_once_with(mock.ANY, UUID,
                                                       bound)
                self.bind.assert_called_once_with(
                    mock.ANY, self.instance, self.migration.return_value)

    def test_migration_record_missing_is_a_warning(self):
        self.migration.side_effect = exception.MigrationNotFoundByStatus(
            instance_id=UUID, status=POSTCOPY)
        delta = self.handle(
            libvirt_events.DOMAIN_EVENT_SUSPENDED,
            libvirt_events.DOMAIN_EVENT_SUSPENDED_POSTCOPY,
            PAUSED, MIGRATING)
        self.assertEqual(1, delta['delivered'], delta)
        self.bind.assert_not_called()
        self.assertIn('Unable to find migration record', self.log)

    def test_event_for_a_deleted_instance_is_logged_at_debug(self):
        self.instance = None
        self.sync.reset_mock()
        counts = test_faults.Counts(self.ledger)
        self.set_state(PAUSED)
        self.emit(libvirt_events.DOMAIN_EVENT_SUSPENDED, 0)
        delta = counts.wait_ended(1)
        self.assertEqual(1, delta['delivered'], delta)
        self.sync.assert_not_called()
        self.assertIn('arrived for non-existent instance',
                      self.manager_log.output)
        self.assertNotIn('ERROR', self.manager_log.output)
