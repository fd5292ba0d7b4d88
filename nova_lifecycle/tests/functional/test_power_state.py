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

"""Power states through the plugin in Nova's in-process deployment.

Each test drives Nova through its REST API (or the fake hypervisor) and
checks what the API shows, which compute API calls the compute manager
made as a result, and how the plugin's ledger accounted for the libvirt
events. ``[lifecycle] stopped_event_delay`` is 60 s in these tests, so a
test that finishes in seconds did not wait for it.
"""

from nova.compute import power_state
from nova.compute import vm_states
from nova import objects

from nova_lifecycle.eventpath import libvirt_events
from nova_lifecycle.tests import fixtures as lc_fixtures
from nova_lifecycle.tests.functional import base


class PowerStateTestCase(base.LifecycleTestBase):

    def setUp(self):
        super().setUp()
        self.start_lifecycle_compute()

    def manager_calls(self, name):
        """Instances the compute manager called ``name`` of its API for."""
        return self.api_calls.made(name, by=self.manager.compute_api)

    def instance(self, server):
        return objects.Instance.get_by_uuid(self.admin_context(),
                                            server['id'])


class GuestStopTest(PowerStateTestCase):
    """The guest stops by itself: Nova stops the instance within the grace.

    ``stopped_event_grace`` is 0.2 s and ``stopped_event_delay`` 60 s: a
    wait of a quarter of the delay only succeeds on the grace path.
    """

    def assert_stopped_by_nova(self, server, before):
        self.wait_for_status(server, 'SHUTOFF', timeout=base.DELAY / 4)
        self.assertEqual([server['id']], self.manager_calls('stop'))
        self.assertEqual([], self.api_calls.made('force_stop'))
        instance = self.instance(server)
        self.assertEqual(vm_states.STOPPED, instance.vm_state)
        self.assertEqual(power_state.SHUTDOWN, instance.power_state)
        # The STOPPED event was delivered, not cancelled.
        self.wait_for_stats(
            lambda s: s['delivered'] == before['delivered'] + 1 and
            s['pending'] == 0, 'the STOPPED event to be delivered')
        self.assertEqual(before['cancelled'],
                         self.lifecycle_stats()['cancelled'])

    def boot(self):
        server = self._create_server(networks='none')
        self.wait_for_no_pending()
        return server, self.lifecycle_stats()

    def test_guest_power_off_reaches_api_within_the_grace(self):
        server, before = self.boot()

        self.guest_stops(server)

        self.assertEqual(['STARTED_BOOTED', 'SHUTDOWN_GUEST',
                          'STOPPED_SHUTDOWN'], self.events.of(server))
        self.assert_stopped_by_nova(server, before)
        # Nova's stop found the domain off: no further event.
        self.assertEqual(3, len(self.events.of(server)))

    def test_guest_crash_reaches_api_within_the_grace(self):
        server, before = self.boot()

        self.guest_stops(
            server,
            stopped_detail=libvirt_events.DOMAIN_EVENT_STOPPED_CRASHED,
            shutdown_detail=None)

        self.assertEqual(['STARTED_BOOTED', 'STOPPED_CRASHED'],
                         self.events.of(server))
        self.assert_stopped_by_nova(server, before)

    def test_stale_stop_of_a_running_guest_is_dropped(self):
        server, before = self.boot()

        self.stale_guest_stop_events(server)

        # Held for the grace, then the live domain says it runs.
        self.wait_for_stats(
            lambda s: s['cancelled_by_reason'].get(
                'domain is running again') == 1 and s['pending'] == 0,
            'the re-check to drop the STOPPED event')
        self.assertEqual(('ACTIVE', None), self.server_status(server))
        self.assertEqual([], self.api_calls.made('stop'))
        self.assertEqual([], self.api_calls.made('force_stop'))
        self.assertEqual(before['delivered'],
                         self.lifecycle_stats()['delivered'])


class RebootTest(PowerStateTestCase):

    def test_soft_and_hard_reboot_do_not_stop_the_server(self):
        server = self._create_server(networks='none')
        self.wait_for_no_pending()
        before = self.lifecycle_stats()
        domain = self.domain(server)

        # Soft: SHUTDOWN_GUEST (QEMU's word for an ACPI shutdown, whoever
        # asked), STOPPED_SHUTDOWN, then STARTED_BOOTED.
        self._reboot_server(server, hard=False)
        # Nova's soft reboot keeps the domain; its fallback, a hard reboot,
        # would have defined a new one.
        self.assertIs(domain, self.domain(server))
        self.assertEqual(['STARTED_BOOTED', 'SHUTDOWN_GUEST',
                          'STOPPED_SHUTDOWN', 'STARTED_BOOTED'],
                         self.events.of(server))
        self.wait_for_stats(
            lambda s: self.stopped_cancelled(s) == 1 and s['pending'] == 0,
            'the STOPPED of the soft reboot to be cancelled')

        # Hard: SHUTDOWN_HOST, STOPPED_DESTROYED, then STARTED_BOOTED of a
        # new domain.
        self._reboot_server(server, hard=True)
        self.assertIsNot(domain, self.domain(server))
        self.assertEqual(['SHUTDOWN_HOST', 'STOPPED_DESTROYED',
                          'STARTED_BOOTED'],
                         self.events.of(server)[4:])
        self.wait_for_stats(
            lambda s: self.stopped_cancelled(s) == 2 and s['pending'] == 0,
            'the STOPPED of the hard reboot to be cancelled')

        self.assertEqual(('ACTIVE', None), self.server_status(server))
        self.assertEqual(base.RUNNING, self.domain(server)._state)
        self.assertEqual([], self.api_calls.made('stop'))
        self.assertEqual([], self.api_calls.made('force_stop'))
        stats = self.lifecycle_stats()
        # Two STOPPED and two STARTED came in; each STOPPED ended cancelled
        # (superseded by the STARTED, or dropped by the re-check) and each
        # STARTED was delivered.
        self.assertEqual(before['received'] + 4, stats['received'], stats)
        self.assertEqual(before['delivered'] + 2, stats['delivered'], stats)
        self.assertEqual(before['cancelled'] + 2, stats['cancelled'], stats)
        self.assertEqual(2, self.stopped_cancelled(stats), stats)


class ApiStopStartTest(PowerStateTestCase):

    def test_stop_and_start_through_the_api(self):
        server = self._create_server(networks='none')
        self.wait_for_no_pending()
        before = self.lifecycle_stats()

        self._stop_server(server)
        self.wait_for_status(server, 'SHUTOFF')
        self.assertEqual(base.SHUTOFF, self.domain(server)._state)
        self.assertEqual(['STARTED_BOOTED', 'SHUTDOWN_GUEST',
                          'STOPPED_SHUTDOWN'], self.events.of(server))
        # The STOPPED came during Nova's power_off and was held; once the
        # power_off ended it was due after the grace, not the 60 s delay,
        # and the re-check found the domain off.
        self.wait_for_stats(
            lambda s: s['delivered'] == before['delivered'] + 1 and
            s['pending'] == 0, 'the STOPPED of the power-off to be handled')
        # Only the REST API's own stop: the manager added nothing.
        self.assertEqual([server['id']], self.api_calls.made('stop'))
        self.assertEqual([], self.manager_calls('stop'))
        self.assertEqual([], self.api_calls.made('force_stop'))

        self._start_server(server)
        self.wait_for_status(server, 'ACTIVE')
        self.assertEqual(base.RUNNING, self.domain(server)._state)
        self.assertEqual('STARTED_BOOTED', self.events.of(server)[-1])
        self.wait_for_no_pending()
        self.assertEqual(('ACTIVE', None), self.server_status(server))
        self.assertEqual([server['id']], self.api_calls.made('stop'))
        self.assertEqual([], self.api_calls.made('force_stop'))


class ConnectionLostTest(PowerStateTestCase):

    def test_resync_after_reconnect_stops_a_server_found_off(self):
        server = self._create_server(networks='none')
        self.wait_for_no_pending()
        before = self.lifecycle_stats()
        resyncs = self.useFixture(lc_fixtures.CountedCalls(
            'nova_lifecycle.compute.hooks.ManagerHooks.resync'))

        # The domain stops while libvirt's events cannot reach us.
        self.power_off_silently(server)
        self.driver._host._close_callback(self.connection,
                                          'test: connection dropped', None)

        # No periodic task runs here: only the resync can see it.
        self.wait_for_status(server, 'SHUTOFF')
        self.assertEqual([server['id']], self.manager_calls('stop'))
        self.assertEqual([], self.api_calls.made('force_stop'))
        self.assertTrue(resyncs.wait_for(1))
        self.assertIsNotNone(self.driver._host._wrapped_conn)
        # The service the lost connection disabled is enabled again.
        self._wait_for_service_parameter(
            'compute1', 'nova-compute', {'status': 'enabled'},
            max_retries=40)
        self.assertEqual(before['received'],
                         self.lifecycle_stats()['received'])
        self.assertEqual(['STARTED_BOOTED'], self.events.of(server))


class EventsOffInNovaTest(base.LifecycleTestBase):
    """``[workarounds] handle_virt_lifecycle_events = False``.

    Nova registers no listener: no event reaches it, the power-state sync
    is Nova's own, and the plugin says so once.
    """

    UNHOOKED = 'handle_virt_lifecycle_events is False'

    def setUp(self):
        super().setUp()
        self.flags(handle_virt_lifecycle_events=False, group='workarounds')
        self.start_lifecycle_compute()

    def test_only_novas_own_sync_sees_a_guest_power_off(self):
        server = self._create_server(networks='none')
        self.wait_for_no_pending()
        self.assertFalse(self.driver.power_sync.status()['hooked'])
        before = self.lifecycle_stats()

        # Its SHUTDOWN travels as the STOPPED's detail: one event.
        self.guest_stops(server)
        self.wait_for_stats(
            lambda s: s['received'] == before['received'] + 1 and
            s['pending'] == 0, 'the guest\'s STOPPED to end')
        stats = self.lifecycle_stats()
        self.assertEqual(0, stats['delivered'])
        self.assertEqual(stats['received'],
                         stats['cancelled_by_reason']['no listener'])
        self.assertEqual(('ACTIVE', None), self.server_status(server))
        self.assertEqual([], self.log_lines(self.UNHOOKED))

        self.manager._sync_power_states(self.admin_context())
        self.wait_for_status(server, 'SHUTOFF')
        self.assertEqual([server['id']],
                         self.api_calls.made('stop',
                                             by=self.manager.compute_api))
        warnings = self.log_lines(self.UNHOOKED)
        self.assertEqual(1, len(warnings), warnings)
        self.assertIn('WARNING', warnings[0])
        # Nova's step, not the plugin's: nothing counted there.
        self.assertEqual({}, self.driver.power_sync.status()['instances'])

        self.manager._sync_power_states(self.admin_context())
        self.assertEqual(1, len(self.log_lines(self.UNHOOKED)))

    def log_lines(self, text):
        return [line for line in self.stdlog.logger.output.splitlines()
                if text in line]


class PeriodicSyncTest(PowerStateTestCase):

    SERVERS = 20
    # Twenty builds share the compute's build pool (ten at a time); on a
    # loaded 2-core machine the last is seen ACTIVE after 20 s or more.
    BUILD_WAIT = 90

    def create_servers(self, count):
        body = self._build_server(networks='none')
        body.update(min_count=count, max_count=count)
        self.api.post_server({'server': body})
        servers = [s for s in self.api.get_servers()
                   if s['name'].startswith(body['name'])]
        self.assertEqual(count, len(servers))
        for server in servers:
            self.wait_for_status(server, 'ACTIVE', timeout=self.BUILD_WAIT)
        return servers

    def test_sync_of_many_servers_with_mismatches(self):
        servers = self.create_servers(self.SERVERS)
        off_active = servers[:4]          # ACTIVE, domain shut off
        running_stopped = servers[4:8]    # STOPPED, domain running
        consistent = servers[8:]          # ACTIVE and running
        for server in running_stopped:
            self._stop_server(server)
            self.wait_for_status(server, 'SHUTOFF')
        self.wait_for_no_pending()
        self.api_calls.reset()
        for server in off_active:
            self.power_off_silently(server)
        for server in running_stopped:
            self.power_on_silently(server)
        seen = {s['id']: len(self.events.of(s)) for s in servers}
        queries = getattr(self.connection, '_lifecycle_bulk_queries', 0)

        self.manager._sync_power_states(self.admin_context())

        for server in off_active:
            self.wait_for_status(server, 'SHUTOFF')
        for server in running_stopped:
            # The API showed SHUTOFF all along: wait for the domain.
            self.assertTrue(base.wait_until(
                lambda: self.domain(server)._state == base.SHUTOFF),
                'domain of %s still runs' % server['id'])
            self.wait_for_status(server, 'SHUTOFF')
        for server in consistent:
            self.assertEqual(('ACTIVE', None), self.server_status(server))
            self.assertEqual(base.RUNNING, self.domain(server)._state)

        self.assertEqual(sorted(s['id'] for s in off_active),
                         sorted(self.manager_calls('stop')))
        self.assertEqual(sorted(s['id'] for s in running_stopped),
                         sorted(self.manager_calls('force_stop')))
        self.assertEqual(len(off_active) + len(running_stopped),
                         len(self.api_calls.made('stop')) +
                         len(self.api_calls.made('force_stop')))
        # The whole sync read the hypervisor with one bulk query.
        self.assertEqual(queries + 1, self.connection._lifecycle_bulk_queries)
        # Only the forced stops of running domains made libvirt events.
        for server in servers:
            new = self.events.of(server)[seen[server['id']]:]
            expected = (['SHUTDOWN_GUEST', 'STOPPED_SHUTDOWN']
                        if server in running_stopped else [])
            self.assertEqual(expected, new, server['id'])
