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

"""Graceful shutdown of nova-compute with the plugin as its driver.

Nova stops nova-compute in two steps (``Service.stop``): the RPC server
on the 'compute' topic stops taking requests while the one on
'compute-alt' keeps serving the operations in progress, the manager's
``graceful_shutdown`` waits (nova 34: for the tracked tasks, up to
``manager_shutdown_timeout``; nova 33: that many seconds), then its
``cleanup_host`` calls the driver's. Nova 34 tests this in
``nova/tests/functional/test_graceful_shutdown.py`` with its fake driver;
nova 33 has the two RPC servers but no such tests. Here the same
scenarios run with two computes, 'src' and 'dest', on the plugin over
Nova's fake libvirt, where libvirt's events reach the driver from its
event-loop thread (:class:`EventsOnLibvirtLoop`):

* where Nova's scenario skipped the driver's work (the fake driver's live
  migration only calls ``post_method``), the libvirt driver does it: the
  migration runs through ``migrateToURI3`` (held in flight there), the
  cold migration's ``migrate_disk_and_power_off`` really shuts the guest
  down (held by a guest slow to honour ACPI), the snapshot is a cold one
  that stops and restarts the domain;
* every scenario also checks the plugin: the domain events of the
  operation reach the manager while the service shuts down, no event is
  lost (the ledger balances, nothing is pending), the compute API never
  got a stop() it should not have, and no plugin thread is left;
* the scenarios that rely on nova 34's task tracking
  (``Manager._in_progress_tasks``, ``_pending_dest_*``, periodic tasks
  skipped) exist only with nova 34; nova 33 runs the others, with the
  manager's wait held by the test as Nova's own tests do.

The plugin's own drain scenarios follow: an operation that starts on
compute-alt during the shutdown and waits on a domain event, and the
drain of held STOPPED events at ``cleanup_host``.
"""

import threading

import fixtures
from nova.compute import manager as compute_manager
from nova import context as nova_context
from nova import manager as nova_manager
from nova.virt.libvirt import utils as libvirt_utils
from oslo_utils import fileutils

from nova_lifecycle.eventpath import libvirt_events
from nova_lifecycle.tests import fixtures as lc_fixtures
from nova_lifecycle.tests.functional import base
from nova_lifecycle.tests.functional import shutdown_fixtures
from nova_lifecycle.virt import driver as lc_driver
from nova_lifecycle.virt import shutdown

# Nova 33 on: Service.stop runs the manager's graceful_shutdown while
# 'compute-alt' serves the operations in progress. Nova 31 and 32 stop
# their one RPC server, then call cleanup_host: only the drain at
# cleanup_host is theirs (NoGracefulShutdownTest).
NOVA_GRACEFUL_SHUTDOWN = hasattr(compute_manager.ComputeManager,
                                 'graceful_shutdown')
# Nova 34 tracks the manager's tasks and skips periodic tasks during a
# graceful shutdown; nova 33 waits a fixed time.
NOVA_TRACKS_TASKS = hasattr(nova_manager.Manager, 'set_shutdown_in_progress')

# Seconds an operation held by a test may wait.
OPERATION_TIMEOUT = 60
# nova 34 gives the manager's graceful_shutdown this long before it stops
# the RPC servers anyway; nova 33 sleeps that long in it, where Nova's test
# configuration has 0.
MANAGER_SHUTDOWN_TIMEOUT = 30 if NOVA_TRACKS_TASKS else 0

# A slow guest powers off half-way between two re-reads of its domain by
# the power-off: only its STOPPED event can end the wait then.
HALF_RECHECK = shutdown.RECHECK_INTERVAL / 2
LEFT_TO_NEXT_START = lc_driver.REASON_LEFT_TO_NEXT_START

DRAIN_LINE = ('Pending STOPPED event for instance %s dropped by shutdown; '
              'the power state sync at the next start-up reconciles it.')


def _create_image(driver, context, instance, *args, **kwargs):
    """Nova's functional stand-in for image creation, plus the directory.

    The libvirt driver renames the instance directory when it migrates a
    server, so it must exist.
    """
    fileutils.ensure_tree(libvirt_utils.get_instance_path(instance))
    return False, False


class PluginCompute:
    """One nova-compute on the plugin and what the test watches of it."""

    def __init__(self, host, service, connection, queued):
        self.host = host
        self.service = service
        self.manager = service.manager
        self.driver = service.manager.driver
        self.connection = connection
        self.events = queued
        self.cleanup_done = threading.Event()
        self.cleanup_errors = []
        self.checked = False

    def stats(self):
        return base.lifecycle_counts(self.driver)

    def loop_running(self):
        """Whether the driver's libvirt event-loop thread runs."""
        return self.driver.event_handler.status()['running']


class GracefulShutdownBase(base.LifecycleTestBase):
    """Two computes on the plugin, 'src' and 'dest'."""

    def setUp(self):
        super().setUp()
        # A service heartbeat delayed by a busy test machine must not make
        # the scheduler or the API think a compute is down.
        self.flags(report_interval=1, service_down_time=30)
        if NOVA_GRACEFUL_SHUTDOWN:
            self.flags(manager_shutdown_timeout=MANAGER_SHUTDOWN_TIMEOUT)
        self.flags(disable_libvirt_livesnapshot=True, group='workarounds')
        self.useFixture(fixtures.MockPatch(
            'nova.virt.libvirt.driver.LibvirtDriver._get_instance_disk_info',
            return_value=[]))
        self.useFixture(fixtures.MonkeyPatch(
            'nova.virt.libvirt.driver.LibvirtDriver._create_image',
            _create_image))
        self.guests = self.useFixture(shutdown_fixtures.AcpiGuests())
        self.loop = self.useFixture(shutdown_fixtures.EventsOnLibvirtLoop())
        self.connections = {}
        self.migrations = self.useFixture(
            shutdown_fixtures.LiveMigrationOnFake(self.connections))
        self.plugin_computes = {}
        # Runs after every compute was stopped and checked.
        self.addCleanup(self._check_no_plugin_thread)
        self.src = self.start_plugin_compute('src')
        self.dest = self.start_plugin_compute('dest')

    # Computes

    def start_plugin_compute(self, host, connection=None):
        """Start (or restart, on ``connection``) a compute on the plugin."""
        self.computes.pop(host, None)
        self.compute_rp_uuids.pop(host, None)
        self.start_compute(host, connection=connection)
        service = self.computes[host]
        conn = self._connect_through_nova(service.manager.driver._host)
        self.loop.attach(conn)
        self.connections[host] = conn
        compute = PluginCompute(
            host, service, conn,
            self.useFixture(base.QueuedEvents(service.manager.driver)))
        self._watch_cleanup(compute)
        self.plugin_computes[host] = compute
        self.addCleanup(self._stop_and_check, compute)
        return compute

    def restart_plugin_compute(self, compute):
        """A new nova-compute for a stopped one, on the same hypervisor."""
        self.assertTrue(compute.checked, 'restart after stop_and_check')
        new = self.start_plugin_compute(compute.host, compute.connection)
        self._wait_for_service_parameter(
            compute.host, 'nova-compute', {'state': 'up'}, max_retries=40)
        return new

    def _watch_cleanup(self, compute):
        cleanup_host = compute.driver.cleanup_host

        def watched(*args, **kwargs):
            try:
                return cleanup_host(*args, **kwargs)
            except Exception as exc:
                compute.cleanup_errors.append(exc)
                raise
            finally:
                compute.cleanup_done.set()

        compute.driver.cleanup_host = watched

    def stop_and_check(self, compute):
        """Stop the compute if needed, then check what the plugin left."""
        if compute.checked:
            return
        compute.checked = True
        if not compute.cleanup_done.is_set():
            compute.service.stop()
        self.assertTrue(compute.cleanup_done.wait(base.STOP_WAIT),
                        'cleanup_host of %s did not return' % compute.host)
        self.assertEqual([], compute.cleanup_errors)
        stats = compute.stats()
        self.assert_ledger_balanced(stats)
        self.assertEqual(0, stats['pending'], stats)
        self.assertEqual({}, stats['failed_by_error'], stats)
        self.assertIsNone(compute.driver._compute_event_callback)
        self.assertFalse(compute.loop_running())

    _stop_and_check = stop_and_check

    def _check_no_plugin_thread(self):
        for compute in self.plugin_computes.values():
            self.assertTrue(compute.checked)
        self.assertEqual([], self._new_plugin_threads(),
                         'plugin threads left after cleanup_host')

    # Graceful shutdown

    def hold_manager_shutdown(self, compute):
        """The manager's graceful_shutdown waits until the test says so.

        It then runs ``cleanup_host`` as Nova's does. Returns the event
        set once the manager waits and the one that lets it go on.
        """
        waiting = threading.Event()
        release = threading.Event()
        manager = compute.manager
        nova_graceful_shutdown = type(manager).graceful_shutdown

        def graceful_shutdown(which, *args):
            # nova 34 passes its timeout, nova 33 nothing.
            if which is not manager:
                return nova_graceful_shutdown(which, *args)
            waiting.set()
            release.wait(OPERATION_TIMEOUT)
            manager.cleanup_host()

        # Nova's method, in the class: the plugin's hook on the manager
        # (which learns there that the service stops) still runs first.
        self.useFixture(fixtures.MonkeyPatch(
            'nova.compute.manager.ComputeManager.graceful_shutdown',
            graceful_shutdown))
        self.addCleanup(release.set)
        return waiting, release

    def stop_gracefully(self, compute):
        """Stop the service on a thread of its own, as SIGTERM does.

        Returns the thread once the 'compute' RPC server has stopped
        taking requests.
        """
        not_taking = threading.Event()
        rpcserver = compute.service.rpcserver
        stop = rpcserver.stop

        def stopping(*args, **kwargs):
            try:
                return stop(*args, **kwargs)
            finally:
                not_taking.set()

        rpcserver.stop = stopping
        thread = threading.Thread(target=compute.service.stop,
                                  name='test-stop-%s' % compute.host)
        thread.start()
        self.addCleanup(thread.join, OPERATION_TIMEOUT)
        self.assertTrue(not_taking.wait(30),
                        'the compute RPC server of %s did not stop'
                        % compute.host)
        if NOVA_TRACKS_TASKS:
            self.assertTrue(compute.manager._shutdown_in_progress.is_set())
        return thread

    def wait_for_stopped(self, compute, thread):
        thread.join(OPERATION_TIMEOUT)
        self.assertFalse(thread.is_alive(), 'the service did not stop')
        self.stop_and_check(compute)

    # Checks

    def assert_events_flow(self, compute, server, names):
        """libvirt sent ``names`` for the server and none is pending."""
        self.assertTrue(base.wait_until(
            lambda: compute.events.of(server)[-len(names):] == names),
            '%s: %s' % (compute.host, compute.events.of(server)))
        self.assertTrue(base.wait_until(
            lambda: compute.stats()['pending'] == 0),
            compute.stats())
        self.assertTrue(compute.loop_running())

    def assert_no_stop_calls(self):
        self.assertEqual([], self.api_calls.made('stop'))
        self.assertEqual([], self.api_calls.made('force_stop'))

    def external_stop(self, server, shutdown_detail, stopped_detail):
        """The guest of ``server`` on 'src' stops behind Nova's back."""
        conn = self.src.connection
        dom = conn.lookupByUUIDString(server['id'])
        conn._emit_lifecycle(
            dom, libvirt_events.DOMAIN_EVENT_SHUTDOWN, shutdown_detail)
        shutdown_fixtures.mark_stopped(conn, dom, stopped_detail)

    def log_lines(self, text):
        return [line for line in self.stdlog.logger.output.splitlines()
                if text in line]


class NovaScenariosTest(GracefulShutdownBase):
    """Nova's graceful-shutdown scenarios, with the plugin's driver."""

    def test_live_migration_source_compute_graceful_shutdown(self):
        server = self._create_server(host='src', networks='none')
        waiting, release = self.hold_manager_shutdown(self.src)
        self.migrations.hold()
        self.api.post_server_action(
            server['id'],
            {'os-migrateLive': {'host': 'dest', 'block_migration': 'auto'}})
        self.assertTrue(self.migrations.started.wait(30),
                        'the migration did not reach libvirt')

        stop = self.stop_gracefully(self.src)
        self.assertTrue(waiting.wait(30))
        self.assertEqual('MIGRATING',
                         self.api.get_server(server['id'])['status'])
        self.migrations.proceed.set()

        server = self._wait_for_state_change(server, 'ACTIVE')
        self.assertEqual('dest', server['OS-EXT-SRV-ATTR:host'])
        self._wait_for_migration_status(server, ['completed'])
        # The source's domain events reached its manager during the
        # shutdown, the STOPPED after the migration's grace.
        self.assert_events_flow(self.src, server,
                                ['SUSPENDED_MIGRATED', 'STOPPED_MIGRATED'])
        self.assertEqual(['STARTED_MIGRATED', 'RESUMED_MIGRATED'],
                         self.dest.events.of(server))
        self.assertTrue(stop.is_alive())
        release.set()
        self.wait_for_stopped(self.src, stop)
        self.assert_no_stop_calls()

        self.restart_plugin_compute(self.src)
        self._delete_server(server)

    def test_live_migration_dest_compute_graceful_shutdown(self):
        server = self._create_server(host='src', networks='none')
        waiting, release = self.hold_manager_shutdown(self.dest)
        held = self.useFixture(shutdown_fixtures.HeldCall(
            self.dest.driver, 'post_live_migration_at_destination'))
        self.api.post_server_action(
            server['id'],
            {'os-migrateLive': {'host': 'dest', 'block_migration': 'auto'}})
        self.assertTrue(held.started.wait(30))

        stop = self.stop_gracefully(self.dest)
        self.assertTrue(waiting.wait(30))
        self.assertEqual('MIGRATING',
                         self.api.get_server(server['id'])['status'])
        self.assertGreater(held.waiting(), 0)
        held.proceed.set()

        server = self._wait_for_state_change(server, 'ACTIVE')
        self.assertEqual('dest', server['OS-EXT-SRV-ATTR:host'])
        self._wait_for_migration_status(server, ['completed'])
        self.assert_events_flow(self.dest, server,
                                ['STARTED_MIGRATED', 'RESUMED_MIGRATED'])
        self.assertTrue(stop.is_alive())
        release.set()
        self.wait_for_stopped(self.dest, stop)
        self.assertEqual(shutdown_fixtures.RUNNING,
                         self.connections['dest'].lookupByUUIDString(
                             server['id'])._state)
        self.assert_no_stop_calls()

        self.restart_plugin_compute(self.dest)
        self._delete_server(server)

    def test_cold_migration_source_compute_graceful_shutdown(self):
        """The guest's ACPI shutdown ends during the source's shutdown."""
        server = self._create_server(host='src', networks='none')
        waiting, release = self.hold_manager_shutdown(self.src)
        self.guests.slow(server['id'], after=HALF_RECHECK, held=True)
        self.api.post_server_action(server['id'], {'migrate': None})
        self.assertTrue(self.guests.wait_for_press(server['id']))

        stop = self.stop_gracefully(self.src)
        self.assertTrue(waiting.wait(30))
        self.assertEqual('RESIZE',
                         self.api.get_server(server['id'])['status'])
        self.guests.release(server['id'])

        server = self._wait_for_state_change(server, 'VERIFY_RESIZE')
        self.assertEqual('dest', server['OS-EXT-SRV-ATTR:host'])
        self._wait_for_migration_status(server, ['finished'])
        # The power-off inside migrate_disk_and_power_off ended on the
        # guest's STOPPED event, which the event path still carried.
        self.assertEqual(1, len(self.log_lines('woken by its event')))
        self.assert_events_flow(self.src, server,
                                ['SHUTDOWN_GUEST', 'STOPPED_SHUTDOWN'])
        self.assertTrue(stop.is_alive())
        release.set()
        self.wait_for_stopped(self.src, stop)
        self.assert_no_stop_calls()

        self.restart_plugin_compute(self.src)
        self._confirm_and_delete(server)

    def test_cold_migration_dest_compute_graceful_shutdown(self):
        server = self._create_server(host='src', networks='none')
        waiting, release = self.hold_manager_shutdown(self.dest)
        held = self.useFixture(shutdown_fixtures.HeldCall(
            self.dest.driver, 'finish_migration'))
        self.api.post_server_action(server['id'], {'migrate': None})
        self.assertTrue(held.started.wait(30))

        stop = self.stop_gracefully(self.dest)
        self.assertTrue(waiting.wait(30))
        self.assertEqual('RESIZE',
                         self.api.get_server(server['id'])['status'])
        self.assertGreater(held.waiting(), 0)
        held.proceed.set()

        server = self._wait_for_state_change(server, 'VERIFY_RESIZE')
        self.assertEqual('dest', server['OS-EXT-SRV-ATTR:host'])
        self._wait_for_migration_status(server, ['finished'])
        self.assert_events_flow(self.dest, server, ['STARTED_BOOTED'])
        self.assertTrue(stop.is_alive())
        release.set()
        self.wait_for_stopped(self.dest, stop)
        self.assert_no_stop_calls()

        self.restart_plugin_compute(self.dest)
        self._confirm_and_delete(server)

    def test_instance_build_graceful_shutdown(self):
        waiting, release = self.hold_manager_shutdown(self.src)
        held = self.useFixture(shutdown_fixtures.HeldCall(
            self.src.driver, 'spawn'))
        server = self.api.post_server({'server': self._build_server(
            networks='none', host='src')})
        self.assertTrue(held.started.wait(30))

        stop = self.stop_gracefully(self.src)
        self.assertTrue(waiting.wait(30))
        self.assertEqual('BUILD', self.api.get_server(server['id'])['status'])
        self.assertGreater(held.waiting(), 0)
        held.proceed.set()

        server = self._wait_for_state_change(server, 'ACTIVE')
        self.assertEqual('src', server['OS-EXT-SRV-ATTR:host'])
        self.assert_events_flow(self.src, server, ['STARTED_BOOTED'])
        self.assertTrue(stop.is_alive())
        release.set()
        self.wait_for_stopped(self.src, stop)
        self.assert_no_stop_calls()

        self.restart_plugin_compute(self.src)
        self._delete_server(server)

    def test_revert_resize_dest_compute_graceful_shutdown(self):
        waiting, release = self.hold_manager_shutdown(self.dest)
        server = self._create_server(host='src', networks='none')
        self.api.post_server_action(server['id'], {'migrate': None})
        server = self._wait_for_state_change(server, 'VERIFY_RESIZE')
        self.assertEqual('dest', server['OS-EXT-SRV-ATTR:host'])
        self.wait_for_no_pending_on(self.dest)
        held = self.useFixture(shutdown_fixtures.HeldCall(
            self.dest.driver, 'destroy'))
        self.api.post_server_action(server['id'], {'revertResize': None})
        self.assertTrue(held.started.wait(30))

        stop = self.stop_gracefully(self.dest)
        self.assertEqual('REVERT_RESIZE',
                         self.api.get_server(server['id'])['status'])
        self.assertGreater(held.waiting(), 0)
        # revert_resize came on the 'compute' topic: the stop waits for it
        # (nova 33 before the manager's wait, nova 34 after).
        held.proceed.set()
        self.assertTrue(waiting.wait(30))

        server = self._wait_for_state_change(server, 'ACTIVE')
        self.assertEqual('src', server['OS-EXT-SRV-ATTR:host'])
        self._wait_for_migration_status(server, ['reverted'])
        self.assert_events_flow(self.dest, server,
                                ['SHUTDOWN_HOST', 'STOPPED_DESTROYED'])
        self.assert_events_flow(self.src, server, ['STARTED_BOOTED'])
        release.set()
        self.wait_for_stopped(self.dest, stop)
        self.assert_no_stop_calls()

        self.restart_plugin_compute(self.dest)
        self._delete_server(server)

    def test_snapshot_graceful_shutdown(self):
        """A cold snapshot stops and restarts the domain during shutdown."""
        server = self._create_server(host='src', networks='none')
        waiting, release = self.hold_manager_shutdown(self.src)
        held = self.useFixture(shutdown_fixtures.HeldCall(
            self.src.driver, 'snapshot'))
        self._snapshot_server(server, 'test-snapshot')
        self.assertTrue(held.started.wait(30))

        stop = self.stop_gracefully(self.src)
        self.assertGreater(held.waiting(), 0)
        held.proceed.set()
        self.assertTrue(waiting.wait(30))

        self._wait_for_state_change(server, 'ACTIVE')
        self.assertTrue(base.wait_until(
            lambda: self.api.get_server(server['id'])[
                'OS-EXT-STS:task_state'] is None))
        self.assert_events_flow(self.src, server,
                                ['STOPPED_SHUTDOWN', 'STARTED_BOOTED'])
        # The snapshot's STOPPED was superseded, never delivered.
        self.assertEqual(1, self.stopped_cancelled(self.src.stats()))
        release.set()
        self.wait_for_stopped(self.src, stop)
        self.assert_no_stop_calls()

        self.restart_plugin_compute(self.src)
        self._delete_server(server)

    def test_sync_after_cleanup_host_is_novas_and_starts_no_thread(self):
        """After the drain the manager's sync still works, as upstream's."""
        server = self._create_server(host='src', networks='none')
        waiting, release = self.hold_manager_shutdown(self.src)
        stop = self.stop_gracefully(self.src)
        self.assertTrue(waiting.wait(30))
        release.set()
        self.wait_for_stopped(self.src, stop)
        manager = self.src.manager
        self.assertNotIn('_query_driver_power_state_and_sync',
                         vars(manager))
        synced = []
        original = manager._query_driver_power_state_and_sync

        def query(context, db_instance):
            synced.append(db_instance.uuid)
            return original(context, db_instance)

        self.useFixture(fixtures.MockPatchObject(
            manager, '_query_driver_power_state_and_sync',
            side_effect=query))
        manager._sync_power_states(nova_context.get_admin_context())
        self.assertTrue(base.wait_until(lambda: synced == [server['id']]))
        self.assertTrue(base.wait_until(
            lambda: not manager._syncs_in_progress))
        self.assertEqual([], self.log_lines('Periodic sync_power_state '
                                            'task had an error'))
        self.assertEqual([], self.src.driver.event_handler.threads_alive() +
                         self.src.driver.event_path.threads_alive())
        self.assert_no_stop_calls()

    def wait_for_no_pending_on(self, compute):
        self.assertTrue(base.wait_until(
            lambda: compute.stats()['pending'] == 0), compute.stats())

    def _confirm_and_delete(self, server):
        self.api.post_server_action(server['id'], {'confirmResize': None})
        server = self._wait_for_state_change(server, 'ACTIVE')
        self._delete_server(server)


class NovaPeriodicTasksTest(GracefulShutdownBase):

    if NOVA_TRACKS_TASKS:
        def test_periodic_tasks_skipped_once_shutdown_starts(self):
            """nova 34: no periodic sync, so no plugin query, once stopping."""
            manager = self.src.manager
            queries = getattr(self.src.connection,
                              '_lifecycle_bulk_queries', 0)
            sync = self.useFixture(fixtures.MockPatchObject(
                manager, '_sync_power_states')).mock
            manager.set_shutdown_in_progress()

            manager.periodic_tasks(nova_context.get_admin_context())

            sync.assert_not_called()
            self.assertEqual(queries, getattr(
                self.src.connection, '_lifecycle_bulk_queries', 0))
    else:
        def test_periodic_sync_runs_on_the_plugin_while_manager_waits(self):
            """nova 33 runs periodic tasks during its shutdown wait."""
            server = self._create_server(host='src', networks='none')
            waiting, release = self.hold_manager_shutdown(self.src)
            stop = self.stop_gracefully(self.src)
            self.assertTrue(waiting.wait(30))
            queries = getattr(self.src.connection,
                              '_lifecycle_bulk_queries', 0)
            self.power_off_silently_on(self.src, server)

            self.src.manager.periodic_tasks(
                nova_context.get_admin_context())

            # The plugin's bulk query found the domain off: the manager
            # stopped the instance (a cast the stopped 'compute' server
            # only takes after the restart).
            self.assertEqual(queries + 1,
                             self.src.connection._lifecycle_bulk_queries)
            self.assertTrue(base.wait_until(
                lambda: self.api_calls.made('stop') == [server['id']]))
            release.set()
            self.wait_for_stopped(self.src, stop)
            self.restart_plugin_compute(self.src)
            self.wait_for_status(server, 'SHUTOFF')

        def power_off_silently_on(self, compute, server):
            dom = compute.connection.lookupByUUIDString(server['id'])
            dom._state = shutdown_fixtures.SHUTOFF
            for key, running in list(compute.connection._running_vms.items()):
                if running is dom:
                    del compute.connection._running_vms[key]


if NOVA_TRACKS_TASKS:
    class NovaTaskTrackingTest(GracefulShutdownBase):
        """nova 34's task tracking, with the plugin's driver.

        The manager's graceful_shutdown is Nova's own here: it waits for
        the tracked tasks, then runs cleanup_host.
        """

        def watch_manager_cleanup(self, compute):
            held = self.useFixture(shutdown_fixtures.HeldCall(
                compute.manager, 'cleanup_host'))
            held.proceed.set()
            return held.started

        def in_progress(self, compute):
            return list(compute.manager._in_progress_tasks.values())

        def wait_for_tasks(self, compute, names):
            self.assertTrue(base.wait_until(
                lambda: sorted(t['name'] for t in self.in_progress(compute))
                == sorted(names)), self.in_progress(compute))

        def test_live_migration_dest_shutdown_before_post_live_migration(
                self):
            server = self._create_server(host='src', networks='none')
            self.migrations.hold()
            self.api.post_server_action(
                server['id'],
                {'os-migrateLive': {'host': 'dest',
                                    'block_migration': 'auto'}})
            self.assertTrue(self.migrations.started.wait(30))
            self.assertIn(server['id'],
                          self.dest.manager._pending_dest_live_migrations)

            stop = self.stop_gracefully(self.dest)
            self.assertTrue(stop.is_alive())
            self.migrations.proceed.set()

            server = self._wait_for_state_change(server, 'ACTIVE')
            self.assertEqual('dest', server['OS-EXT-SRV-ATTR:host'])
            self._wait_for_migration_status(server, ['completed'])
            self.assertNotIn(server['id'],
                             self.dest.manager._pending_dest_live_migrations)
            self.wait_for_stopped(self.dest, stop)
            # The destination's domain events arrived while it waited.
            self.assertEqual(['STARTED_MIGRATED', 'RESUMED_MIGRATED'],
                             self.dest.events.of(server))
            self.assertEqual(2, self.dest.stats()['delivered'])
            self.assert_no_stop_calls()

            self.restart_plugin_compute(self.dest)
            self._delete_server(server)

        def test_cold_migration_dest_shutdown_before_resize_instance(self):
            server = self._create_server(host='src', networks='none')
            self.guests.slow(server['id'], after=HALF_RECHECK, held=True)
            self.api.post_server_action(server['id'], {'migrate': None})
            self.assertTrue(self.guests.wait_for_press(server['id']))
            self.assertIn(server['id'],
                          self.dest.manager._pending_dest_resizes)

            stop = self.stop_gracefully(self.dest)
            self.assertTrue(stop.is_alive())
            self.guests.release(server['id'])

            server = self._wait_for_state_change(server, 'VERIFY_RESIZE')
            self.assertEqual('dest', server['OS-EXT-SRV-ATTR:host'])
            self.assertNotIn(server['id'],
                             self.dest.manager._pending_dest_resizes)
            self.wait_for_stopped(self.dest, stop)
            self.assertEqual(['STARTED_BOOTED'], self.dest.events.of(server))
            self.assertEqual(1, len(self.log_lines('woken by its event')))
            self.assert_no_stop_calls()

            self.restart_plugin_compute(self.dest)
            self.api.post_server_action(server['id'],
                                        {'confirmResize': None})
            server = self._wait_for_state_change(server, 'ACTIVE')
            self._delete_server(server)

        def test_build_instance_track_wait_during_shutdown(self):
            cleanup_called = self.watch_manager_cleanup(self.src)
            held = self.useFixture(shutdown_fixtures.HeldCall(
                self.src.driver, 'spawn'))
            server = self.api.post_server({'server': self._build_server(
                networks='none', host='src')})
            self.assertTrue(held.started.wait(30))
            self.wait_for_tasks(self.src, ['build_instance'])

            stop = self.stop_gracefully(self.src)
            self.assertFalse(cleanup_called.is_set())
            self.assertFalse(self.src.cleanup_done.is_set())
            self.assertGreater(held.waiting(), 0)
            held.proceed.set()

            server = self._wait_for_state_change(server, 'ACTIVE')
            self.wait_for_stopped(self.src, stop)
            self.assertTrue(cleanup_called.is_set())
            self.assertEqual([], self.in_progress(self.src))
            self.assertEqual(['STARTED_BOOTED'], self.src.events.of(server))
            self.assert_no_stop_calls()

            self.restart_plugin_compute(self.src)
            self._delete_server(server)

        def test_snapshot_instance_track_and_wait_during_shutdown(self):
            cleanup_called = self.watch_manager_cleanup(self.src)
            server = self._create_server(host='src', networks='none')
            held = self.useFixture(shutdown_fixtures.HeldCall(
                self.src.driver, 'snapshot'))
            self._snapshot_server(server, 'test-snapshot')
            self.assertTrue(held.started.wait(30))
            self.wait_for_tasks(self.src, ['snapshot_instance'])

            stop = self.stop_gracefully(self.src)
            self.assertFalse(cleanup_called.is_set())
            held.proceed.set()

            self._wait_for_state_change(server, 'ACTIVE')
            self.wait_for_stopped(self.src, stop)
            self.assertTrue(cleanup_called.is_set())
            self.assertEqual([], self.in_progress(self.src))
            self.assertEqual(['STARTED_BOOTED', 'STOPPED_SHUTDOWN',
                              'STARTED_BOOTED'],
                             self.src.events.of(server))
            self.assert_no_stop_calls()

            self.restart_plugin_compute(self.src)
            self._delete_server(server)

        def test_multiple_build_instance_tracked_and_shutdown_wait_for_all(
                self):
            cleanup_called = self.watch_manager_cleanup(self.src)
            spawn = self.src.driver.spawn
            gates = {}
            arrived = threading.Condition()

            def gated_spawn(context, instance, *args, **kwargs):
                with arrived:
                    gate = gates.setdefault(instance.uuid, threading.Event())
                    arrived.notify_all()
                gate.wait(OPERATION_TIMEOUT)
                return spawn(context, instance, *args, **kwargs)

            self.useFixture(fixtures.MockPatchObject(
                self.src.driver, 'spawn', side_effect=gated_spawn))
            self.addCleanup(lambda: [g.set() for g in gates.values()])
            body = self._build_server(networks='none', host='src')
            servers = [self.api.post_server({'server': body})
                       for _ in range(2)]
            with arrived:
                self.assertTrue(arrived.wait_for(
                    lambda: len(gates) == 2, 30))
            self.wait_for_tasks(self.src, ['build_instance'] * 2)

            stop = self.stop_gracefully(self.src)
            gates[servers[0]['id']].set()
            self._wait_for_state_change(servers[0], 'ACTIVE')
            self.wait_for_tasks(self.src, ['build_instance'])
            self.assertEqual(servers[1]['id'], self.in_progress(
                self.src)[0]['instance_uuid'])
            self.assertFalse(cleanup_called.is_set())
            self.assertTrue(stop.is_alive())
            gates[servers[1]['id']].set()

            self._wait_for_state_change(servers[1], 'ACTIVE')
            self.wait_for_stopped(self.src, stop)
            self.assertTrue(cleanup_called.is_set())
            for server in servers:
                self.assertEqual(['STARTED_BOOTED'],
                                 self.src.events.of(server))
            self.assert_no_stop_calls()

            self.restart_plugin_compute(self.src)
            for server in servers:
                self._delete_server(server)

        def test_different_concurrent_operations_and_shutdown_wait_for_all(
                self):
            cleanup_called = self.watch_manager_cleanup(self.src)
            snap_server = self._create_server(host='src', networks='none')
            pause_server = self._create_server(host='src', networks='none')
            lm_server = self._create_server(host='src', networks='none')
            snap = self.useFixture(shutdown_fixtures.HeldCall(
                self.src.driver, 'snapshot'))
            pause = self.useFixture(shutdown_fixtures.HeldCall(
                self.src.driver, 'pause'))
            self.migrations.hold()

            self._snapshot_server(snap_server, 'test-snapshot')
            self.api.post_server_action(pause_server['id'], {'pause': None})
            self.api.post_server_action(
                lm_server['id'],
                {'os-migrateLive': {'host': 'dest',
                                    'block_migration': 'auto'}})
            self.assertTrue(snap.started.wait(30))
            self.assertTrue(pause.started.wait(30))
            self.assertTrue(self.migrations.started.wait(30))
            self.wait_for_tasks(self.src, ['live_migration', 'pause_instance',
                                           'snapshot_instance'])

            stop = self.stop_gracefully(self.src)
            self.assertFalse(cleanup_called.is_set())
            snap.proceed.set()
            self._wait_for_state_change(snap_server, 'ACTIVE')
            self.wait_for_tasks(self.src, ['live_migration',
                                           'pause_instance'])
            pause.proceed.set()
            self._wait_for_state_change(pause_server, 'PAUSED')
            self.wait_for_tasks(self.src, ['live_migration'])
            self.assertFalse(cleanup_called.is_set())
            self.assertTrue(stop.is_alive())
            self.migrations.proceed.set()

            lm_server = self._wait_for_state_change(lm_server, 'ACTIVE')
            self.assertEqual('dest', lm_server['OS-EXT-SRV-ATTR:host'])
            self.wait_for_stopped(self.src, stop)
            self.assertTrue(cleanup_called.is_set())
            self.assertEqual(['STARTED_BOOTED', 'SUSPENDED_MIGRATED',
                              'STOPPED_MIGRATED'],
                             self.src.events.of(lm_server))
            self.assert_no_stop_calls()

            self.restart_plugin_compute(self.src)
            for server in (snap_server, pause_server, lm_server):
                self._delete_server(server)

        def test_rpc_call_are_tracked(self):
            server = self._create_server(host='src', networks='none')
            pause = self.useFixture(shutdown_fixtures.HeldCall(
                self.src.driver, 'pause'))
            self.api.post_server_action(server['id'], {'pause': None})
            self.assertTrue(pause.started.wait(30))
            self.wait_for_tasks(self.src, ['pause_instance'])
            self.assertEqual(server['id'],
                             self.in_progress(self.src)[0]['instance_uuid'])
            pause.proceed.set()
            self._wait_for_state_change(server, 'PAUSED')
            self.wait_for_tasks(self.src, [])
            self._delete_server(server)


class DrainTest(GracefulShutdownBase):
    """The plugin's part of the graceful shutdown."""

    def test_operation_arriving_on_compute_alt_waits_on_its_event(self):
        """An operation on compute-alt during the stop gets its event.

        resize_instance reaches the source after its stop began; its
        power-off ends on the guest's STOPPED event, carried by libvirt's
        loop, the hold and the dispatcher of a compute shutting down.
        """
        server = self._create_server(host='src', networks='none')
        self.guests.slow(server['id'], after=HALF_RECHECK)
        waiting, release = self.hold_manager_shutdown(self.src)
        cast = self.useFixture(shutdown_fixtures.HeldCall(
            self.dest.manager.compute_rpcapi, 'resize_instance'))
        self.api.post_server_action(server['id'], {'migrate': None})
        self.assertTrue(cast.started.wait(30))

        stop = self.stop_gracefully(self.src)
        self.assertTrue(waiting.wait(30))
        before = self.src.stats()
        cast.proceed.set()

        server = self._wait_for_state_change(server, 'VERIFY_RESIZE')
        self.assertEqual('dest', server['OS-EXT-SRV-ATTR:host'])
        self.assertEqual(1, self.guests.presses(server['id']))
        woken = self.log_lines('woken by its event')
        self.assertEqual(1, len(woken), woken)
        # Held during migrate_disk_and_power_off, then for the grace; the
        # re-check found the domain off and the manager was told.
        self.assert_events_flow(self.src, server,
                                ['SHUTDOWN_GUEST', 'STOPPED_SHUTDOWN'])
        stats = self.src.stats()
        self.assertEqual(before['received'] + 1, stats['received'], stats)
        self.assertEqual(before['delivered'] + 1, stats['delivered'], stats)
        self.assertEqual(1, len(self.log_lines('VM Stopped (Lifecycle '
                                               'Event)')))
        self.assertTrue(stop.is_alive())
        self.assertFalse(self.src.cleanup_done.is_set())

        release.set()
        self.wait_for_stopped(self.src, stop)
        self.assert_no_stop_calls()
        self.restart_plugin_compute(self.src)
        self._confirm_and_delete(server)

    def test_unexplained_stopped_while_stopping_is_left_to_the_next_start(
            self):
        """A guest powers itself off while nova-compute stops.

        Handed to Nova, its STOPPED would make the manager call the compute
        API's stop(), whose RPC goes to the 'compute' server that already
        stopped: the server would sit in powering-off until the service
        starts again. The plugin leaves it to the sync at the next start.
        """
        server = self._create_server(host='src', networks='none')
        waiting, release = self.hold_manager_shutdown(self.src)
        stop = self.stop_gracefully(self.src)
        self.assertTrue(waiting.wait(30))
        before = self.src.stats()

        conn = self.src.connection
        dom = conn.lookupByUUIDString(server['id'])
        conn._emit_lifecycle(dom, libvirt_events.DOMAIN_EVENT_SHUTDOWN,
                             libvirt_events.DOMAIN_EVENT_SHUTDOWN_GUEST)
        dom._state = base.SHUTOFF
        conn._mark_not_running(dom)
        self.assertTrue(base.wait_until(
            lambda: self.src.stats()['received'] > before['received'] and
            self.src.stats()['pending'] == 0), self.src.stats())

        self.assert_no_stop_calls()
        stats = self.src.stats()
        self.assertEqual(
            1, stats['cancelled_by_reason'].get(LEFT_TO_NEXT_START), stats)
        lines = self.log_lines('left to the power-state sync at the next '
                               'start')
        self.assertEqual(1, len(lines), lines)
        self.assertIn(server['id'], lines[0])
        server = self.api.get_server(server['id'])
        self.assertEqual('ACTIVE', server['status'])
        self.assertIsNone(server['OS-EXT-STS:task_state'])

        release.set()
        self.wait_for_stopped(self.src, stop)
        # The next start's sync sees the guest off and stops the server.
        src = self.restart_plugin_compute(self.src)
        src.manager._sync_power_states(nova_context.get_admin_context())
        self._wait_for_state_change(server, 'SHUTOFF')
        self.assertEqual([server['id']], self.api_calls.made('stop'))
        self._delete_server(server)

    def test_no_resync_after_a_reconnect_while_stopping(self):
        """libvirt's connection drops while nova-compute stops.

        The reconnect still happens, but the resync that follows it is
        skipped: Nova runs no periodic task from then on, and once its
        executors are shut down the sync could not run. The sync at the
        next start finds what the lost events did not say.
        """
        server = self._create_server(host='src', networks='none')
        self.assertTrue(base.wait_until(
            lambda: self.src.stats()['pending'] == 0), self.src.stats())
        resyncs = self.useFixture(lc_fixtures.CountedCalls(
            'nova_lifecycle.compute.hooks.ManagerHooks.resync'))
        syncs = self.useFixture(fixtures.MockPatchObject(
            self.src.manager, '_sync_power_states')).mock
        waiting, release = self.hold_manager_shutdown(self.src)
        stop = self.stop_gracefully(self.src)
        self.assertTrue(waiting.wait(30))

        host = self.src.driver._host
        base.power_off_silently(
            self.src.connection,
            self.src.connection.lookupByUUIDString(server['id']))
        host._close_callback(self.src.connection,
                             'test: connection dropped', None)
        self.assertTrue(resyncs.wait_for(1))
        self.assertEqual(0, syncs.call_count)
        lines = self.log_lines('Not resyncing power states after the '
                               'reconnect')
        self.assertEqual(1, len(lines), lines)
        self.assertEqual('ACTIVE', self.api.get_server(server['id'])[
            'status'])

        release.set()
        self.wait_for_stopped(self.src, stop)
        self.assertEqual(0, syncs.call_count)
        src = self.restart_plugin_compute(self.src)
        src.manager._sync_power_states(nova_context.get_admin_context())
        self._wait_for_state_change(server, 'SHUTOFF')
        self.assertEqual([server['id']], self.api_calls.made('stop'))
        self._delete_server(server)

    def _confirm_and_delete(self, server):
        self.api.post_server_action(server['id'], {'confirmResize': None})
        server = self._wait_for_state_change(server, 'ACTIVE')
        self._delete_server(server)

    def test_drain_delivers_or_cancels_each_stopped_with_one_log_line(self):
        servers = [self._create_server(host='src', networks='none')
                   for _ in range(3)]
        guest_off, destroyed = servers[0], servers[1:]
        self.assertTrue(base.wait_until(
            lambda: self.src.stats()['pending'] == 0))
        waiting, release = self.hold_manager_shutdown(self.src)
        stop = self.stop_gracefully(self.src)
        self.assertTrue(waiting.wait(30))
        before = self.src.stats()

        # The guest powers itself off: after the grace its STOPPED is left
        # to the next start (a stop() now would go to the stopped RPC
        # server). The others are destroyed behind Nova's back: held for
        # the full delay, still held at cleanup_host.
        self.external_stop(
            guest_off, libvirt_events.DOMAIN_EVENT_SHUTDOWN_GUEST,
            libvirt_events.DOMAIN_EVENT_STOPPED_SHUTDOWN)
        for server in destroyed:
            self.external_stop(
                server, libvirt_events.DOMAIN_EVENT_SHUTDOWN_HOST,
                libvirt_events.DOMAIN_EVENT_STOPPED_DESTROYED)
        self.assertTrue(base.wait_until(
            lambda: self.src.stats()['cancelled_by_reason'].get(
                LEFT_TO_NEXT_START, 0) ==
            before['cancelled_by_reason'].get(LEFT_TO_NEXT_START, 0) + 1),
            self.src.stats())
        self.assertEqual(
            sorted(s['id'] for s in destroyed),
            sorted(uuid for uuid, _
                   in self.src.driver.event_path.status().held))
        self.assertEqual(before['delivered'], self.src.stats()['delivered'])
        self.assert_no_stop_calls()

        release.set()
        self.wait_for_stopped(self.src, stop)

        for server in servers:
            lines = self.log_lines(DRAIN_LINE % server['id'])
            self.assertEqual(1 if server in destroyed else 0, len(lines),
                             (server['id'], lines))
        self.assertEqual(2, len(self.log_lines('dropped by shutdown')))
        stats = self.src.stats()
        self.assertEqual(before['received'] + 3, stats['received'], stats)
        self.assertEqual({'shutdown': 2, LEFT_TO_NEXT_START: 1}, {
            reason: count - before['cancelled_by_reason'].get(reason, 0)
            for reason, count in stats['cancelled_by_reason'].items()
            if count != before['cancelled_by_reason'].get(reason, 0)})
        drained = self.log_lines('nova-lifecycle stopped:')
        self.assertEqual(1, len(drained), drained)
        self.assertRegex(drained[0], r'0 pending; no thread left')

        # The next start-up syncs what the drain cancelled.
        self.restart_plugin_compute(self.src)
        self.plugin_computes['src'].manager._sync_power_states(
            nova_context.get_admin_context())
        for server in servers:
            self.wait_for_status(server, 'SHUTOFF')
        self.assertEqual(sorted(s['id'] for s in servers),
                         sorted(self.api_calls.made('stop')))
        self.assertEqual([], self.api_calls.made('force_stop'))

    def test_stopped_once_the_manager_unregistered_gets_one_log_line(self):
        """Nova's cleanup_host unregisters before it calls the driver's.

        A STOPPED handed on in between has nobody to go to: it is dropped
        with one line naming the instance, and the next start-up's sync
        stops the server.
        """
        server = self._create_server(host='src', networks='none')
        self.assertTrue(base.wait_until(
            lambda: self.src.stats()['pending'] == 0))
        driver_cleanup = self.useFixture(shutdown_fixtures.HeldCall(
            self.src.driver, 'cleanup_host'))
        stop = self.stop_gracefully(self.src)
        self.assertTrue(driver_cleanup.started.wait(30))
        self.assertIsNone(self.src.driver._compute_event_callback)
        before = self.src.stats()['cancelled_by_reason'].get(
            'no listener', 0)

        self.external_stop(server, libvirt_events.DOMAIN_EVENT_SHUTDOWN_GUEST,
                           libvirt_events.DOMAIN_EVENT_STOPPED_SHUTDOWN)

        self.assertTrue(base.wait_until(
            lambda: self.src.stats()['cancelled_by_reason'].get(
                'no listener', 0) == before + 1 and
            self.src.stats()['pending'] == 0), self.src.stats())
        driver_cleanup.proceed.set()
        self.wait_for_stopped(self.src, stop)
        self.assertEqual(1, len(self.log_lines(
            'STOPPED event for instance %s dropped: no compute manager '
            'listens' % server['id'])))
        self.assertEqual([], self.log_lines('dropped by shutdown'))
        self.assert_no_stop_calls()

        restarted = self.restart_plugin_compute(self.src)
        restarted.manager._sync_power_states(
            nova_context.get_admin_context())
        self.wait_for_status(server, 'SHUTOFF')
        self.assertEqual([server['id']], self.api_calls.made(
            'stop', by=restarted.manager.compute_api))


class NoGracefulShutdownTest(GracefulShutdownBase):
    """Nova 31/32: no graceful shutdown; the drain at cleanup_host stays."""

    def test_one_line_says_graceful_shutdown_is_not_available(self):
        lines = self.log_lines('has no graceful shutdown of nova-compute')
        self.assertEqual(len(self.plugin_computes), len(lines), lines)
        self.assertNotIn('graceful_shutdown', self.src.manager.__dict__)

    def test_stopped_events_held_at_cleanup_host_are_dropped_with_a_line(
            self):
        servers = [self._create_server(host='src', networks='none')
                   for _ in range(2)]
        self.assertTrue(base.wait_until(
            lambda: self.src.stats()['pending'] == 0))
        before = self.src.stats()
        for server in servers:
            self.external_stop(
                server, libvirt_events.DOMAIN_EVENT_SHUTDOWN_HOST,
                libvirt_events.DOMAIN_EVENT_STOPPED_DESTROYED)
        self.assertTrue(base.wait_until(
            lambda: len(self.src.driver.event_path.status().held) == 2),
            self.src.driver.event_path.status())

        self.stop_and_check(self.src)

        for server in servers:
            self.assertEqual(1, len(self.log_lines(DRAIN_LINE % server['id'])))
        stats = self.src.stats()
        self.assertEqual(before['received'] + 2, stats['received'], stats)
        self.assertEqual(before['delivered'], stats['delivered'], stats)
        drained = self.log_lines('nova-lifecycle stopped:')
        self.assertEqual(1, len(drained), drained)
        self.assertRegex(drained[0], r'0 pending; no thread left')
        self.assert_no_stop_calls()

        restarted = self.restart_plugin_compute(self.src)
        restarted.manager._sync_power_states(
            nova_context.get_admin_context())
        for server in servers:
            self.wait_for_status(server, 'SHUTOFF')
        self.assertEqual(sorted(s['id'] for s in servers),
                         sorted(self.api_calls.made('stop')))


if NOVA_GRACEFUL_SHUTDOWN:
    del NoGracefulShutdownTest
else:
    # Nova's graceful shutdown scenarios, and the plugin's that need it
    # (compute-alt, the manager's wait): not on nova 31 and 32.
    del NovaScenariosTest, NovaPeriodicTasksTest
    for _name in ('test_operation_arriving_on_compute_alt_waits_on_its_event',
                  'test_unexplained_stopped_while_stopping_is_left_to_the_'
                  'next_start',
                  'test_no_resync_after_a_reconnect_while_stopping',
                  'test_drain_delivers_or_cancels_each_stopped_with_one_log_'
                  'line'):
        delattr(DrainTest, _name)
