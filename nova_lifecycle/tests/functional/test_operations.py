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

"""Nova operations on one compute: no spurious stop, correct end state.

Each scenario drives one operation through Nova's REST API while Nova's
fake libvirt sends the lifecycle events real libvirt sends during it
(:class:`base.RealisticDomainEvents`,
:class:`operations_base.StartAndSaveEvents`), then checks with
:meth:`operations_base.OperationsTestBase.assert_operation` that the
server ends where Nova says, that the compute API's ``stop`` and
``force_stop`` were never called, and that every STOPPED held during the
operation was cancelled or re-checked. The ``Upstream`` classes run the
same scenarios with ``fast_stopped_events = False``.
"""

import fixtures

from nova_lifecycle.tests.functional import base
from nova_lifecycle.tests.functional import operations_base

HOST = 'compute1'
# What libvirt sends for Nova's clean power-off, a destroy and a start.
CLEAN_OFF = ['SHUTDOWN_GUEST', 'STOPPED_SHUTDOWN']
DESTROYED = ['SHUTDOWN_HOST', 'STOPPED_DESTROYED']
START = ['RESUMED_UNPAUSED', 'STARTED_BOOTED']
# libvirt's REBOOT event (the fake has no name for it).
VIR_DOMAIN_EVENT_ID_REBOOT = 1


class SingleComputeTestBase(operations_base.OperationsTestBase):

    def setUp(self):
        super().setUp()
        self.compute = self.start_followed_compute(HOST)

    def events_of(self, mark, server):
        return self.events_since(mark, HOST, server)


class RescueTest(SingleComputeTestBase):

    def test_rescue_and_unrescue(self):
        server = self.boot()
        domain = self.domain(server)

        mark = self.mark()
        self._rescue_server(server)
        # Nova's manager powers the guest off cleanly, then the driver's
        # rescue starts the rescue domain.
        self.assert_operation(server, mark, 'RESCUE', HOST,
                              {HOST: [('STOPPED_SHUTDOWN', ['power_off'])]})
        self.assertEqual(CLEAN_OFF + START, self.events_of(mark, server))
        self.assertIsNot(domain, self.domain(server))

        mark = self.mark()
        self._unrescue_server(server)
        self.assert_operation(server, mark, 'ACTIVE', HOST,
                              {HOST: [('STOPPED_DESTROYED', ['unrescue'])]})
        self.assertEqual(DESTROYED + START, self.events_of(mark, server))

    def test_stop_held_before_a_slow_rescue_is_not_acted_on(self):
        """The power-off's STOPPED reaches Nova while the rescue runs.

        A real rescue takes seconds (its disk is built from an image)
        between the clean power-off and the start of the rescue domain:
        the STOPPED held during the power-off is then due, re-checked,
        and delivered for a domain that is off. Nova's manager sees the
        task state and does nothing; the rescue ends in RESCUE.
        """
        server = self.boot()
        fates = self.compute.fates
        mark = self.mark()
        real_create_image = operations_base.InstanceFiles._create_image

        def slow_rescue_image(driver, context, instance, *args, **kwargs):
            if kwargs.get('suffix') == '.rescue':
                base.wait_until(
                    lambda: fates.delivered_since(mark[HOST][0]))
            return real_create_image(driver, context, instance, *args,
                                     **kwargs)

        self.useFixture(fixtures.MonkeyPatch(
            'nova.virt.libvirt.LibvirtDriver._create_image',
            slow_rescue_image))

        self._rescue_server(server)

        self.assertEqual(
            [(server['id'], 'STOPPED_SHUTDOWN', base.SHUTOFF)],
            fates.delivered_since(mark[HOST][0]))
        self.assert_operation(server, mark, 'RESCUE', HOST,
                              {HOST: [('STOPPED_SHUTDOWN', ['power_off'])]})


class GuestRebootTest(SingleComputeTestBase):

    def guest_resets(self, server, times=3):
        """The guest reboots itself: QEMU resets it in place.

        libvirt 9.0 / QEMU 7.2 send REBOOT events (two or three per reset)
        to REBOOT callbacks, and no lifecycle event; the domain runs on.
        """
        dom = self.domain(server)
        callback = self.connection._event_callbacks.get(
            VIR_DOMAIN_EVENT_ID_REBOOT)
        for _ in range(times):
            if callback is not None:
                callback[0](self.connection, dom, callback[1])
        self.assertEqual(base.RUNNING, dom._state)

    def test_reboot_inside_the_guest(self):
        server = self.boot()
        mark = self.mark()
        received = self.lifecycle_stats()['received']

        self.guest_resets(server)
        # The periodic sync finds the domain running, as the API says.
        self.manager._sync_power_states(self.admin_context())

        self.assert_operation(server, mark, 'ACTIVE', HOST, {})
        self.assertEqual([], self.events_of(mark, server))
        self.assertEqual(received, self.lifecycle_stats()['received'])


class RebuildTest(SingleComputeTestBase):

    def test_rebuild(self):
        server = self.boot()
        image = self.glance.auto_disk_config_enabled_image['id']
        self.assertNotEqual(server['image']['id'], image)
        mark = self.mark()

        self._rebuild_server(server, image)

        # Nova powers the guest off, destroys the domain and spawns anew.
        self.assert_operation(server, mark, 'ACTIVE', HOST,
                              {HOST: [('STOPPED_SHUTDOWN', ['power_off'])]})
        self.assertEqual(CLEAN_OFF + START, self.events_of(mark, server))
        self.assertEqual(image,
                         self.api.get_server(server['id'])['image']['id'])


class ShelveTest(SingleComputeTestBase):

    def test_shelve_and_unshelve(self):
        server = self.boot()

        mark = self.mark()
        self.api.post_server_action(server['id'], {'shelve': {}})
        # shelved_offload_time 0: the domain is powered off cleanly, the
        # image saved, and the domain removed from the host.
        self.assert_operation(server, mark, 'SHELVED_OFFLOADED', None,
                              {HOST: [('STOPPED_SHUTDOWN', ['power_off'])]})
        self.assertEqual(CLEAN_OFF, self.events_of(mark, server))
        self.assertIsNone(operations_base.domain_of(self.connection,
                                                    server['id']))

        mark = self.mark()
        self.api.post_server_action(server['id'], {'unshelve': None})
        self.assert_operation(server, mark, 'ACTIVE', HOST, {})
        self.assertEqual(START, self.events_of(mark, server))


class SnapshotTest(SingleComputeTestBase):

    def snapshot(self, server):
        self.api.post_server_action(
            server['id'], {'createImage': {'name': 'snap-' + server['id']}})

    def test_live_snapshot(self):
        server = self.boot()
        mark = self.mark()

        self.snapshot(server)

        self.assert_operation(server, mark, 'ACTIVE', HOST, {})
        self.assertEqual([], self.events_of(mark, server))

    def test_cold_snapshot(self):
        """The guest is saved to disk and restored around the snapshot."""
        self.flags(disable_libvirt_livesnapshot=True, group='workarounds')
        server = self.boot()
        mark = self.mark()

        self.snapshot(server)

        # The driver's snapshot suspends the guest with a managed save,
        # then restores it.
        self.assert_operation(server, mark, 'ACTIVE', HOST,
                              {HOST: [('STOPPED_SAVED', ['snapshot'])]})
        self.assertEqual(['SUSPENDED_PAUSED', 'STOPPED_SAVED',
                          'STARTED_RESTORED', 'RESUMED_FROM_SNAPSHOT'],
                         self.events_of(mark, server))


class SameHostResizeTest(SingleComputeTestBase):

    def setUp(self):
        super().setUp()
        self.flags(allow_resize_to_same_host=True)
        self.bigger = self._create_flavor(memory_mb=1024, vcpu=1, disk=1,
                                          ephemeral=0)

    def resize(self, server):
        mark = self.mark()
        self.api.post_server_action(
            server['id'], {'resize': {'flavorRef': self.bigger}})
        self.assert_operation(
            server, mark, 'VERIFY_RESIZE', HOST,
            {HOST: [('STOPPED_SHUTDOWN',
                     ['migrate_disk_and_power_off', 'power_off'])]})
        self.assertEqual(CLEAN_OFF + START, self.events_of(mark, server))

    def test_resize_and_confirm(self):
        server = self.boot()
        self.resize(server)

        mark = self.mark()
        self.api.post_server_action(server['id'], {'confirmResize': None})
        self.assert_operation(server, mark, 'ACTIVE', HOST, {})
        self.assertEqual([], self.events_of(mark, server))
        self.assertEqual(1024, self.api.get_server(
            server['id'])['flavor']['ram'])

    def test_resize_and_revert(self):
        server = self.boot()
        self.resize(server)

        mark = self.mark()
        self.api.post_server_action(server['id'], {'revertResize': None})
        self.assert_operation(server, mark, 'ACTIVE', HOST,
                              {HOST: [('STOPPED_DESTROYED', ['destroy'])]})
        self.assertEqual(DESTROYED + START, self.events_of(mark, server))
        self.assertEqual(512, self.api.get_server(
            server['id'])['flavor']['ram'])


# The same scenarios with fast_stopped_events = False (upstream's plain
# delay, no re-check).

class UpstreamRescueTest(RescueTest):
    FAST = False


class UpstreamRebuildTest(RebuildTest):
    FAST = False


class UpstreamShelveTest(ShelveTest):
    FAST = False


class UpstreamSnapshotTest(SnapshotTest):
    FAST = False


class UpstreamSameHostResizeTest(SameHostResizeTest):
    FAST = False
