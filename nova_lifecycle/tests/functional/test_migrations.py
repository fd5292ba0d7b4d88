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

"""Moves between two computes on the plugin: no spurious stop.

Both computes run ``LibvirtLifecycleDriver``, each on its own fake libvirt
connection. Each scenario drives a resize, a cold migration or a live
migration through Nova's REST API, with the events real libvirt sends
(:class:`operations_base.LiveMigrationEvents` for the live migration),
and checks on both computes what
:meth:`operations_base.OperationsTestBase.assert_operation` checks. The
``Upstream`` classes run them with ``fast_stopped_events = False``.
"""

from importlib import metadata

from nova_lifecycle.tests.functional import base
from nova_lifecycle.tests.functional import operations_base
from nova_lifecycle.tests.functional import test_operations

SOURCE = 'compute1'
# Nova 32 on re-raises the live migration thread's error after the
# rollback and the manager sets ERROR; nova 31's thread error ends with
# the rollback, the instance ACTIVE.
NOVA_MAJOR = int(metadata.version('nova').split('.')[0])
FAILED_LIVE_MIGRATION_STATE = 'ERROR' if NOVA_MAJOR >= 32 else 'ACTIVE'
DEST = 'compute2'
CLEAN_OFF = test_operations.CLEAN_OFF
DESTROYED = test_operations.DESTROYED
START = test_operations.START
# The resize's power-off: the driver's migrate_disk_and_power_off calls
# its power_off.
RESIZE_OFF = [('STOPPED_SHUTDOWN', ['migrate_disk_and_power_off',
                                    'power_off'])]


class TwoComputesTestBase(operations_base.OperationsTestBase):

    def setUp(self):
        super().setUp()
        self.start_followed_compute(SOURCE)
        self.start_followed_compute(DEST)

    def boot_on_source(self):
        server = self.boot(host=SOURCE)
        self.assertEqual(SOURCE, self.host_of(server))
        return server

    def assert_events(self, mark, server, source, dest):
        self.assertEqual(source, self.events_since(mark, SOURCE, server))
        self.assertEqual(dest, self.events_since(mark, DEST, server))


class ResizeTest(TwoComputesTestBase):

    def setUp(self):
        super().setUp()
        self.bigger = self._create_flavor(memory_mb=1024, vcpu=1, disk=1,
                                          ephemeral=0)

    def move(self, server):
        """Resize to the other compute."""
        self.api.post_server_action(
            server['id'], {'resize': {'flavorRef': self.bigger}})

    def moved(self):
        server = self.boot_on_source()
        mark = self.mark()
        self.move(server)
        # The source powers the guest off; the destination starts it.
        self.assert_operation(server, mark, 'VERIFY_RESIZE', DEST,
                              {SOURCE: RESIZE_OFF})
        self.assert_events(mark, server, CLEAN_OFF, START)
        return server

    def test_confirm(self):
        server = self.moved()

        mark = self.mark()
        self.api.post_server_action(server['id'], {'confirmResize': None})
        # The source's domain is off already: no event. (Nova would
        # undefine it, but in one process CONF.host is the compute started
        # last, which makes Nova's confirm_migration think the instance is
        # still on the source.)
        self.assert_operation(server, mark, 'ACTIVE', DEST, {})
        self.assert_events(mark, server, [], [])
        self.assertEqual(base.SHUTOFF, operations_base.domain_state(
            self.lifecycle_computes[SOURCE].connection, server['id']))

    def test_revert(self):
        server = self.moved()

        mark = self.mark()
        self.api.post_server_action(server['id'], {'revertResize': None})
        # The destination destroys its domain; the source starts its own.
        self.assert_operation(server, mark, 'ACTIVE', SOURCE,
                              {DEST: [('STOPPED_DESTROYED', ['destroy'])]})
        self.assert_events(mark, server, START, DESTROYED)
        self.assertIsNone(operations_base.domain_of(
            self.lifecycle_computes[DEST].connection, server['id']))


class ColdMigrationTest(ResizeTest):

    def move(self, server):
        self.api.post_server_action(server['id'], {'migrate': {'host': DEST}})


class LiveMigrationTest(TwoComputesTestBase):

    def setUp(self):
        super().setUp()
        self.migrations = self.useFixture(operations_base.LiveMigrationEvents(
            {hostname: compute.connection
             for hostname, compute in self.lifecycle_computes.items()}))

    def test_live_migration(self):
        server = self.boot_on_source()
        mark = self.mark()

        self.api.post_server_action(
            server['id'],
            {'os-migrateLive': {'host': DEST, 'block_migration': 'auto'}})
        self._wait_for_migration_status(server, ['completed'])

        self.assert_operation(
            server, mark, 'ACTIVE', DEST,
            {SOURCE: [('STOPPED_MIGRATED', ['live_migration'])]})
        self.assertEqual([server['id']], self.migrations.migrated)
        self.assert_events(mark, server,
                           ['SUSPENDED_MIGRATED', 'STOPPED_MIGRATED'],
                           ['STARTED_MIGRATED', 'RESUMED_MIGRATED'])
        self.assertIsNone(operations_base.domain_of(
            self.lifecycle_computes[SOURCE].connection, server['id']))

    def test_failed_live_migration(self):
        """The destination's domain dies; the guest runs on at the source.

        libvirt says STOPPED_FAILED on the destination, where the driver
        is not operating on the instance then: the plugin holds it for
        the grace only (a failed QEMU), re-checks it (no domain) and
        delivers it; the destination's manager finds no domain and the
        instance on the source, and does nothing.
        """
        server = self.boot_on_source()
        self.migrations.fail_next = True
        mark = self.mark()

        self.api.post_server_action(
            server['id'],
            {'os-migrateLive': {'host': DEST, 'block_migration': 'auto'}})
        self._wait_for_migration_status(server, ['error', 'failed'])

        # Nova's monitor rolls back (the instance is ACTIVE again), then
        # (nova 32 on) re-raises the migration thread's error, and the
        # manager sets ERROR: Nova's doing, not a stop. The guest runs on
        # the source.
        self.assert_operation(server, mark, FAILED_LIVE_MIGRATION_STATE,
                              SOURCE,
                              {DEST: [('STOPPED_FAILED', [])]},
                              running_on=SOURCE)
        self.assertEqual([server['id']], self.migrations.failed)
        self.assert_events(mark, server, [],
                           ['STARTED_MIGRATED', 'STOPPED_FAILED'])
        fates = self.lifecycle_computes[DEST].fates
        (_, _, _, seconds), = fates.held_since(mark[DEST][0])
        self.assertEqual(base.GRACE if self.FAST else self.delay, seconds)
        self.assertEqual(
            [(server['id'], 'STOPPED_FAILED', None)],
            fates.delivered_since(mark[DEST][0]))


class UpstreamResizeTest(ResizeTest):
    FAST = False


class UpstreamColdMigrationTest(ColdMigrationTest):
    FAST = False


class UpstreamLiveMigrationTest(LiveMigrationTest):
    FAST = False
