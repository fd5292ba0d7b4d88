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

"""Faults on the event path: every event accounted for, no thread dies.

Each test makes a fault happen where it would in production (Nova's own
compute manager and object layer, Nova's fake libvirt, real executors) and
then checks:

* the ledger: each event ended in the right bucket, with its reason or
  error, and received = delivered + cancelled + failed + pending;
* that the path still works: the next event is delivered (the driver
  tests run one dispatch worker, so a dead worker would show) and
  libvirt's loop thread still runs;
* that no plugin thread is left after ``cleanup_host``
  (``NoThreadLeftBehind``, whose check runs after every other cleanup).
"""

import collections
from concurrent import futures as cf
import functools
import logging
import threading
import time
from unittest import mock

import fixtures
import futurist
from futurist import rejection
from nova.compute import manager as compute_manager
from nova.compute import power_state
from nova.compute import vm_states
from nova import context as nova_context
from nova import exception
from nova import objects
from nova.tests.fixtures import libvirt as fakelibvirt
from nova.virt import fake
from oslo_db import exception as db_exc
import oslo_messaging

from nova_lifecycle.common import delayed
from nova_lifecycle.common import dispatch
from nova_lifecycle.common import inbox
from nova_lifecycle import concurrency
from nova_lifecycle.eventpath import libvirt_events
from nova_lifecycle.eventpath import loop as libvirt_loop
from nova_lifecycle.tests import base
from nova_lifecycle.tests import fixtures as lc_fixtures
from nova_lifecycle.tests.unit import test_driver
from nova_lifecycle.tests.unit import test_event_path
from nova_lifecycle.tests.unit import test_sync
from nova_lifecycle.virt import driver as lc_driver

WAIT = 10
UUID = test_driver.UUID
OTHER_UUID = '99999999-8888-7777-6666-555555555555'

# libvirt domain states (virDomainState).
RUNNING = fakelibvirt.VIR_DOMAIN_RUNNING
PAUSED = fakelibvirt.VIR_DOMAIN_PAUSED
SHUTOFF = fakelibvirt.VIR_DOMAIN_SHUTOFF

# Events for the event path alone (Nova's transitions, not domain states).
lifecycle = test_event_path.lifecycle
UUID_A = test_event_path.UUID_A
UUID_B = test_event_path.UUID_B
EVENT_STARTED = test_event_path.STARTED
EVENT_STOPPED = test_event_path.STOPPED
EVENT_PAUSED = test_event_path.PAUSED
EVENT_RESUMED = test_event_path.RESUMED


def libvirt_error(message, code, domain):
    return fakelibvirt.make_libvirtError(
        fakelibvirt.libvirtError, message, error_code=code,
        error_domain=domain)


def connection_reset():
    """What a call fails with when libvirtd's socket breaks."""
    return libvirt_error('Cannot recv data: Connection reset by peer',
                         fakelibvirt.VIR_ERR_SYSTEM_ERROR,
                         fakelibvirt.VIR_FROM_RPC)


def socket_closed():
    """What a call fails with once the client socket is closed."""
    return libvirt_error('internal error: client socket is closed',
                         fakelibvirt.VIR_ERR_INTERNAL_ERROR,
                         fakelibvirt.VIR_FROM_REMOTE)


def connection_refused():
    """What connecting fails with while libvirtd is down."""
    return libvirt_error(
        "Failed to connect socket to '/var/run/libvirt/libvirt-sock': "
        "Connection refused", fakelibvirt.VIR_ERR_SYSTEM_ERROR,
        fakelibvirt.VIR_FROM_RPC)


def native_queue():
    """The unpatched ``queue`` module, whatever the mode."""
    if concurrency.threading_mode():
        import queue
        return queue
    from eventlet import patcher
    return patcher.original('queue')


def raw(obj):
    """The fake libvirt object behind eventlet's tpool proxy, if any."""
    return getattr(obj, '_obj', obj)


def wait_until(predicate, timeout=WAIT):
    """Poll ``predicate`` until it holds; its last value otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(0.005)


class Counts:
    """An event path's counters (``PathCounts``) since this was made."""

    TOTALS = ('received', 'delivered', 'cancelled', 'failed', 'pending')

    def __init__(self, ledger):
        self.ledger = ledger
        self.start = ledger.snapshot()

    def _since(self, now):
        delta = {key: now[key] - self.start[key] for key in self.TOTALS}
        for key in ('cancelled_by_reason', 'failed_by_error'):
            delta[key] = dict(collections.Counter(now[key]) -
                              collections.Counter(self.start[key]))
        return delta

    def now(self):
        return self._since(self.ledger.snapshot())

    def wait(self, predicate):
        """Wait until ``predicate(delta)`` holds; the delta, or raise."""
        if not self.ledger.wait_until(lambda s: predicate(self._since(s)),
                                      WAIT):
            raise AssertionError('ledger never got there: %s'
                                 % self.ledger.snapshot())
        return self.now()

    def wait_ended(self, received):
        """Wait until ``received`` more events came in and none is pending.

        :returns: the counters since this object was made.
        """
        def ended(snapshot):
            delta = self._since(snapshot)
            return (delta['received'] >= received and
                    snapshot['pending'] == 0)

        if not self.ledger.wait_until(ended, WAIT):
            raise AssertionError('events still pending: %s'
                                 % self.ledger.snapshot())
        delta = self.now()
        assert delta['received'] == received, delta
        return delta


class SlowListener(test_driver.Listener):
    """The compute manager's place, taking ``seconds`` per event."""

    def __init__(self, seconds):
        super().__init__()
        self.seconds = seconds

    def __call__(self, event):
        time.sleep(self.seconds)
        super().__call__(event)

    def libvirt_events(self, uuid):
        with self.cond:
            return [e.libvirt_event for e in self.events if e.uuid == uuid]


class FaultTestCase(test_driver.DriverTestCase):
    """The plugin driver on Nova's fake libvirt with one dispatch worker."""

    REQUIRES_LOCKING = True

    def setUp(self):
        super().setUp()
        self.flags(stopped_event_delay=60, stopped_event_grace=0.05,
                   dispatch_workers=1, group='lifecycle')
        self.driver = lc_driver.LibvirtLifecycleDriver(fake.FakeVirtAPI(),
                                                       False)
        self.ledger = lc_fixtures.PathCounts(self.driver.event_path)
        # Runs after cleanup_host (cleanups run last-in, first-out).
        self.addCleanup(self.assert_all_ended)

    @property
    def log(self):
        return self.stdlog.logger.output

    def assert_all_ended(self):
        stats = self.ledger.snapshot()
        self.assertTrue(self.ledger.balanced(), stats)
        self.assertEqual(0, stats['pending'], stats)

    def set_state(self, state, dom=None):
        raw(dom or self.dom)._state = state

    def emit(self, event_type, detail, dom=None):
        """libvirt calls the lifecycle callback (on a native thread)."""
        self.conn._emit_lifecycle(dom or self.dom, event_type, detail)

    def guest_shuts_down(self):
        """The guest powers itself off: SHUTDOWN then STOPPED (1 event)."""
        self.set_state(SHUTOFF)
        self.emit(
            libvirt_events.DOMAIN_EVENT_SHUTDOWN,
            libvirt_events.DOMAIN_EVENT_SHUTDOWN_GUEST)
        self.emit(
            libvirt_events.DOMAIN_EVENT_STOPPED,
            libvirt_events.DOMAIN_EVENT_STOPPED_SHUTDOWN)

    def assert_path_alive(self):
        """The next event is delivered; libvirt's loop thread runs."""
        counts = Counts(self.ledger)
        self.set_state(PAUSED)
        self.emit(libvirt_events.DOMAIN_EVENT_SUSPENDED, 0)
        delta = counts.wait_ended(1)
        self.assertEqual(1, delta['delivered'], delta)
        threads = concurrency.plugin_threads()
        self.assertIn(libvirt_loop.THREAD_NAME, threads)
        if concurrency.threading_mode():
            # The one dispatch worker (green workers carry no name).
            self.assertIn('lifecycle-dispatch_0', threads)

    def libvirtd_restarts(self, refusals=0):
        """Reconnects find libvirtd, with its domains, after ``refusals``.

        :returns: the mock of the host's ``_connect``.
        """
        self.useFixture(fixtures.MonkeyPatch(
            'nova_lifecycle.virt.driver.RECONNECT_FIRST_WAIT', 0.01))
        self.useFixture(fixtures.MonkeyPatch(
            'nova_lifecycle.virt.driver.RECONNECT_MAX_WAIT', 0.02))
        left = [connection_refused() for _ in range(refusals)]

        def connect(uri, read_only):
            if left:
                raise left.pop(0)
            return self.conn

        return self.useFixture(fixtures.MockPatchObject(
            self.driver._host, '_connect', side_effect=connect)).mock

    def stop_and_check_threads(self):
        self.driver.cleanup_host('compute1')
        self.assertEqual([], concurrency.plugin_threads())
        self.assert_all_ended()


class ManagerFaultTestCase(FaultTestCase):
    """Nova's real ComputeManager listens; its object layer is mocked.

    ``Instance.get_by_uuid`` and ``Instance.save`` stand for the database
    behind the conductor; faults are raised from there, and from the
    compute API's ``stop``, so they travel through Nova's own
    ``handle_events`` / ``handle_lifecycle_event`` /
    ``_sync_instance_power_state`` as they would in nova-compute.
    """

    def setUp(self):
        super().setUp()
        self.compute = compute_manager.ComputeManager()
        self.compute.driver = self.driver
        self.driver.register_event_listener(self.compute.handle_events)
        self.instance = objects.Instance(
            id=1, uuid=UUID, vm_state=vm_states.ACTIVE,
            power_state=power_state.RUNNING, task_state=None,
            host=self.compute.host, shutdown_terminate=False)
        # Faults the next reads of an instance raise, in order.
        self.read_faults = []
        self.get_by_uuid = self.useFixture(fixtures.MockPatchObject(
            objects.Instance, 'get_by_uuid',
            side_effect=self._get_by_uuid)).mock
        self.save = self.useFixture(fixtures.MockPatchObject(
            objects.Instance, 'save')).mock
        self.useFixture(fixtures.MockPatchObject(objects.Instance,
                                                 'refresh'))
        self.stop = self.useFixture(fixtures.MockPatchObject(
            self.compute.compute_api, 'stop')).mock
        self.manager_log = self.useFixture(fixtures.FakeLogger(
            name='nova.compute.manager', level=logging.DEBUG,
            nuke_handlers=False))
        self.conn = self.start_events()
        self.dom = self.conn.defineXML(test_driver.DOMAIN_XML)
        counts = Counts(self.ledger)
        self.dom.create()
        self.assertEqual(1, counts.wait_ended(1)['delivered'])

    def _get_by_uuid(self, context, uuid, expected_attrs=None,
                     use_slave=False):
        if self.read_faults:
            raise self.read_faults.pop(0)
        if uuid != UUID:
            raise exception.InstanceNotFound(instance_id=uuid)
        return self.instance

    def pause(self):
        """The guest is paused (1 event, delivered straight away)."""
        self.set_state(PAUSED)
        self.emit(libvirt_events.DOMAIN_EVENT_SUSPENDED, 0)

    def assert_failed_with(self, delta, error_name):
        self.assertEqual({error_name: 1}, delta['failed_by_error'], delta)
        self.assertEqual(0, delta['delivered'], delta)
        self.assertIn('for instance %s failed' % UUID, self.log)
        self.assertIn(error_name, self.log)


class HandlerFaultTest(ManagerFaultTestCase):
    """The manager's handler raises; the next event still runs.

    An error that may pass (message bus, database) makes the path try the
    event again; any other fails it at once.
    """

    def setUp(self):
        super().setUp()
        self.flags(delivery_retries=2, delivery_retry_interval=0.1,
                   group='lifecycle')

    def saves_fail(self, error, times):
        """The next ``times`` saves raise ``error``; the row stays as it was.

        Each attempt reads the instance again, as it would from the
        database: a failed save must not leave Nova's change in it.
        """
        left = [times]
        fields = ('power_state', 'vm_state', 'task_state')

        def save():
            if left[0] > 0:
                left[0] -= 1
                for field, value in kept:
                    setattr(self.instance, field, value)
                raise error

        kept = [(field, getattr(self.instance, field)) for field in fields]
        self.save.side_effect = save

    def assert_delivered_on_attempt(self, delta, attempt, error_name):
        self.assertEqual(1, delta['delivered'], delta)
        self.assertEqual({}, delta['failed_by_error'], delta)
        self.assertIn('for instance %s failed: ' % UUID, self.log)
        self.assertIn('(attempt %d of 3)' % attempt, self.log)
        self.assertEqual({error_name: attempt - 1},
                         self.driver.event_path.status().retries)

    def assert_failed_after_retries(self, delta, error_name):
        self.assertEqual({error_name: 1}, delta['failed_by_error'], delta)
        self.assertEqual(0, delta['delivered'], delta)
        self.assertIn('for instance %s failed after 2 more attempts'
                      % UUID, self.log)
        self.assertEqual({error_name: 2},
                         self.driver.event_path.status().retries)

    def test_db_connection_error_reading_the_instance(self):
        self.read_faults.append(db_exc.DBConnectionError(
            'Lost connection to MySQL server'))
        counts = Counts(self.ledger)
        self.pause()
        self.assert_delivered_on_attempt(counts.wait_ended(1), 2,
                                         'DBConnectionError')
        self.assert_path_alive()

    def test_db_deadlock_writing_the_power_state(self):
        self.saves_fail(db_exc.DBDeadlock(), 2)
        counts = Counts(self.ledger)
        self.guest_shuts_down()
        self.assert_delivered_on_attempt(counts.wait_ended(1), 3,
                                         'DBDeadlock')
        # Nova writes the power state before it calls stop: the first two
        # attempts got that far, the third one on to the stop.
        self.assertEqual(3, self.save.call_count)
        self.stop.assert_called_once_with(mock.ANY, self.instance)
        self.assertEqual(power_state.SHUTDOWN, self.instance.power_state)
        self.assert_path_alive()

    def test_conductor_timeout_reading_the_instance(self):
        # RabbitMQ restarted: the reply to the first read was lost.
        self.read_faults.extend(oslo_messaging.MessagingTimeout(
            'Timed out waiting for a reply to message ID 0123')
            for _ in range(2))
        counts = Counts(self.ledger)
        self.pause()
        self.assert_delivered_on_attempt(counts.wait_ended(1), 3,
                                         'MessagingTimeout')
        self.assert_path_alive()

    def test_database_error_relayed_by_the_conductor(self):
        # nova-compute has no database: a DB error in the conductor comes
        # back as a RemoteError.
        self.saves_fail(oslo_messaging.RemoteError(
            'DBConnectionError', 'Lost connection to MySQL server', ''), 3)
        counts = Counts(self.ledger)
        self.pause()
        self.assert_failed_after_retries(counts.wait_ended(1), 'RemoteError')
        self.assertEqual(3, self.save.call_count)
        self.assertEqual(power_state.RUNNING, self.instance.power_state)
        self.assert_path_alive()

    def test_other_errors_of_the_handler_are_not_tried_again(self):
        self.read_faults.append(exception.NovaException('a bug'))
        counts = Counts(self.ledger)
        self.pause()
        delta = counts.wait_ended(1)
        self.assertEqual({'NovaException': 1}, delta['failed_by_error'])
        # One read at the boot in setUp, one for the pause.
        self.assertEqual(2, self.get_by_uuid.call_count)
        self.assertEqual({}, self.driver.event_path.status().retries)
        self.assert_path_alive()

    def test_messaging_timeout_from_the_compute_api_stop(self):
        self.stop.side_effect = oslo_messaging.MessagingTimeout(
            'Timed out waiting for a reply to message ID 4567')
        counts = Counts(self.ledger)
        self.guest_shuts_down()
        delta = counts.wait_ended(1)
        # Nova catches it (the next sync retries): the event was delivered.
        self.assertEqual(1, delta['delivered'], delta)
        self.assertEqual({}, delta['failed_by_error'])
        self.stop.assert_called_once_with(mock.ANY, self.instance)
        self.assertEqual(power_state.SHUTDOWN, self.instance.power_state)
        self.assertIn('error during stop() in sync_power_state', self.log)
        self.assertIn('Timed out waiting for a reply', self.log)
        self.assert_path_alive()

    def test_instance_not_found_and_a_domain_nova_does_not_know(self):
        counts = Counts(self.ledger)
        # Deleted between the event and the read.
        self.read_faults.append(exception.InstanceNotFound(instance_id=UUID))
        self.pause()
        # A domain that is not a Nova instance at all.
        stranger = self.conn.defineXML(test_driver.domain_xml(OTHER_UUID, 2))
        stranger.create()
        delta = counts.wait_ended(2)
        # Nova's handle_events ignores both: delivered, nothing failed.
        self.assertEqual(2, delta['delivered'], delta)
        self.assertEqual({}, delta['failed_by_error'])
        for uuid in (UUID, OTHER_UUID):
            self.assertIn('%s => ' % uuid, self.manager_log.output)
        self.assertEqual(2, self.manager_log.output.count(
            'arrived for non-existent instance'))
        self.assert_path_alive()

    def test_database_down_for_a_run_of_events(self):
        # Every read fails while the database is down; each event waiting
        # for its next attempt is replaced by the next one, and only the
        # last reaches Nova once the database is back.
        down = threading.Event()
        down.set()
        read = self.get_by_uuid.side_effect

        def read_unless_down(*args, **kwargs):
            if down.is_set():
                raise db_exc.DBConnectionError('Lost connection to MySQL')
            return read(*args, **kwargs)

        self.get_by_uuid.side_effect = read_unless_down
        self.flags(delivery_retries=5, group='lifecycle')
        counts = Counts(self.ledger)
        for i in range(20):
            self.set_state(PAUSED if i % 2 else RUNNING)
            self.emit(libvirt_events.DOMAIN_EVENT_SUSPENDED if i % 2
                      else libvirt_events.DOMAIN_EVENT_RESUMED, 0)
        delta = counts.wait(lambda d: d['received'] == 20 and
                            d['cancelled'] == 19)
        self.assertEqual(1, delta['pending'], delta)
        # By the instance's latest event when each failure was settled.
        reasons = delta['cancelled_by_reason']
        self.assertEqual(19, sum(reasons.values()), reasons)
        self.assertLessEqual(
            set(reasons), {'superseded by Paused', 'superseded by Resumed'})
        down.clear()
        delta = counts.wait_ended(20)
        self.assertEqual((1, 0), (delta['delivered'], delta['failed']))
        self.assertEqual(power_state.PAUSED, self.instance.power_state)
        self.assert_path_alive()
        self.stop_and_check_threads()


class RecheckFaultTest(ManagerFaultTestCase):
    """libvirt fails while a held STOPPED is read again before delivery."""

    def fail_lookups(self, *errors):
        """The next domain lookups raise ``errors``, in order."""
        left = list(errors)
        lookup = fakelibvirt.Connection.lookupByUUIDString

        def failing_lookup(conn, uuid):
            if left:
                raise left.pop(0)
            return lookup(conn, uuid)

        self.useFixture(fixtures.MonkeyPatch(
            'nova.tests.fixtures.libvirt.Connection.lookupByUUIDString',
            failing_lookup))
        return left

    def test_domain_gone_at_the_recheck(self):
        counts = Counts(self.ledger)
        # The guest crashed and its domain is gone (VIR_ERR_NO_DOMAIN)
        # by the time the grace ends, as a transient domain would be.
        self.set_state(SHUTOFF)
        self.dom.undefine()
        self.emit(
            libvirt_events.DOMAIN_EVENT_STOPPED,
            libvirt_events.DOMAIN_EVENT_STOPPED_CRASHED)
        delta = counts.wait_ended(1)
        self.assertEqual(1, delta['delivered'], delta)
        self.assertNotIn('Cannot read the state', self.log)
        # Nova finds no domain either (NOSTATE): no stop for it.
        self.stop.assert_not_called()
        self.assert_path_alive()

    def test_connection_reset_at_the_recheck(self):
        left = self.fail_lookups(connection_reset())
        counts = Counts(self.ledger)
        self.guest_shuts_down()
        delta = counts.wait_ended(1)
        self.assertEqual([], left)
        # The STOPPED is not dropped: delivered, with a warning.
        self.assertEqual(1, delta['delivered'], delta)
        self.assertIn('Cannot read the state of instance %s before '
                      'delivering its STOPPED event; delivering it: '
                      'Cannot recv data' % UUID, self.log)
        self.stop.assert_called_once_with(mock.ANY, self.instance)
        self.assert_path_alive()

    def test_socket_closed_for_the_recheck_and_for_nova(self):
        left = self.fail_lookups(socket_closed(), socket_closed())
        counts = Counts(self.ledger)
        self.guest_shuts_down()
        delta = counts.wait_ended(1)
        self.assertEqual([], left)
        # Nova's own read of the domain fails too: counted as failed with
        # Nova's error; the resync after reconnecting reconciles it.
        self.assertEqual({'InternalError': 1}, delta['failed_by_error'])
        self.assertIn('client socket is closed', self.log)
        self.stop.assert_not_called()
        self.assert_path_alive()

    def test_no_connection_at_the_recheck(self):
        get_connection = self.driver._host.get_connection
        calls = []

        def unavailable_once():
            calls.append(threading.current_thread().name)
            if len(calls) == 1:
                raise exception.HypervisorUnavailable()
            return get_connection()

        self.useFixture(fixtures.MockPatchObject(
            self.driver._host, 'get_connection',
            side_effect=unavailable_once))
        counts = Counts(self.ledger)
        self.guest_shuts_down()
        delta = counts.wait_ended(1)
        self.assertEqual(1, delta['delivered'], delta)
        self.assertIn('delivering it: Connection to the hypervisor is '
                      'broken', self.log)
        self.stop.assert_called_once_with(mock.ANY, self.instance)
        self.assert_path_alive()


class BulkSyncFaultTest(ManagerFaultTestCase):
    """getAllDomainStats fails during the periodic sync or the resync."""

    def setUp(self):
        super().setUp()
        # After the driver's events started: the Host spawns its
        # connection-event loop then.
        self.spawns = self.useFixture(test_sync.DeferredSpawn(self.compute))
        self.bulk_faults = []
        self.bulk_calls = 0

        def get_all_domain_stats(conn, stats, flags=0):
            self.bulk_calls += 1
            if self.bulk_faults:
                raise self.bulk_faults.pop(0)
            return test_sync._fake_get_all_domain_stats(conn, stats, flags)

        self.useFixture(fixtures.MonkeyPatch(
            'nova.tests.fixtures.libvirt.Connection.getAllDomainStats',
            get_all_domain_stats))
        self.useFixture(fixtures.MockPatch(
            'nova.objects.InstanceList.get_by_host',
            side_effect=lambda *args, **kwargs: [self.instance]))
        self.context = nova_context.get_admin_context()

    def test_periodic_sync_while_libvirt_is_unreachable(self):
        self.bulk_faults.append(connection_reset())
        before = self.driver._recent_power_states()
        # As upstream's per-domain listing would, the error ends this run
        # of the periodic task (Nova's periodic task runner logs it).
        self.assertRaises(fakelibvirt.libvirtError,
                          self.compute._sync_power_states, self.context)
        self.assertEqual([], self.spawns.spawned)
        self.assertIs(before, self.driver._recent_power_states())
        self.save.assert_not_called()
        # Events keep flowing meanwhile.
        self.assert_path_alive()
        # The next run reads libvirt again and syncs every instance.
        self.set_state(RUNNING)
        self.instance.power_state = power_state.RUNNING
        self.compute._sync_power_states(self.context)
        self.assertEqual(1, self.spawns.run_all())
        self.assertEqual(2, self.bulk_calls)
        self.assertEqual(power_state.RUNNING,
                         self.driver._recent_power_states().power_state(UUID))

    def test_resync_after_a_reconnect_survives_a_failing_bulk_query(self):
        resyncs = self.useFixture(lc_fixtures.CountedCalls(
            'nova_lifecycle.compute.hooks.ManagerHooks.resync'))
        host = self.driver._host
        self.libvirtd_restarts()
        self.bulk_faults.append(connection_reset())
        host._close_callback(host._wrapped_conn, 'Connection reset', None)
        self.assertTrue(resyncs.wait_for(1, WAIT))
        # The runner logs the failure once the job has raised.
        self.assertTrue(wait_until(
            lambda: not self.driver._resyncer.is_running()))
        self.assertIn('lifecycle-resync failed', self.log)
        self.assertIn('Cannot recv data', self.log)
        self.assertEqual([], self.spawns.spawned)
        self.assert_path_alive()
        # The next outage resyncs normally: the runner was not broken.
        host._close_callback(host._wrapped_conn, 'Connection reset', None)
        self.assertTrue(resyncs.wait_for(2, WAIT))
        self.assertTrue(wait_until(
            lambda: not self.driver._resyncer.is_running()))
        self.assertEqual(2, resyncs.ended)
        self.assertEqual(1, self.spawns.run_all())
        self.assertEqual(2, self.bulk_calls)
        self.stop_and_check_threads()


class ScriptedLibvirtLoop(fixtures.Fixture):
    """The plugin's own libvirt loop thread plays a script.

    Nova's fake ``virEventRunDefaultImpl`` only sleeps. Here each iteration
    of the plugin's loop thread runs up to ``BATCH`` queued steps, the
    callbacks libvirtd would make, on that thread, as libvirt does. ``ran``
    counts the steps run; an exception a step lets escape (into libvirt's
    loop) is kept in ``escaped``.
    """

    BATCH = 10

    def _setUp(self):
        self._steps = native_queue().Queue()
        self._lock = concurrency.native_threading().Lock()
        self.ran = 0
        self.escaped = []
        self.useFixture(fixtures.MonkeyPatch(
            'nova.tests.fixtures.libvirt.virEventRunDefaultImpl',
            self._iteration))

    def add(self, step):
        self._steps.put(step)

    def _iteration(self):
        empty = native_queue().Empty
        for n in range(self.BATCH):
            try:
                step = (self._steps.get(timeout=0.005) if n == 0
                        else self._steps.get_nowait())
            except empty:
                return
            try:
                step()
            except Exception as exc:
                self.escaped.append(exc)
            with self._lock:
                self.ran += 1

    def wait_ran(self, count):
        return wait_until(lambda: self.ran >= count)


class BurstFaultTest(FaultTestCase):
    """Faults while libvirt's loop delivers a burst of events."""

    INSTANCES = 10

    def setUp(self):
        self.loop = self.useFixture(ScriptedLibvirtLoop())
        super().setUp()
        self.listener = SlowListener(0.002)
        self.driver.register_event_listener(self.listener)
        self.conn = self.start_events()
        self.uuids = ['%08d-0000-0000-0000-00000000000%d' % (i, i % 10)
                      for i in range(self.INSTANCES)]
        self.doms = {}
        counts = Counts(self.ledger)
        for i, uuid in enumerate(self.uuids):
            self.doms[uuid] = self.conn.defineXML(
                test_driver.domain_xml(uuid, i + 2))
            self.doms[uuid].create()
        counts.wait_ended(self.INSTANCES)
        self.listener.events.clear()

    def emit_step(self, conn, uuid, event_type, detail=0):
        return functools.partial(raw(conn)._emit_lifecycle,
                                 raw(self.doms[uuid]), event_type, detail)

    def test_connection_closes_mid_burst_and_libvirtd_restarts(self):
        host = self.driver._host
        resynced = threading.Event()
        self.useFixture(fixtures.MockPatchObject(
            self.driver.power_sync, 'resync', side_effect=resynced.set))
        # libvirtd refuses connections three times while it restarts.
        connect = self.libvirtd_restarts(refusals=3)
        sent = collections.defaultdict(list)

        def burst(count):
            for i in range(count):
                uuid = self.uuids[i % self.INSTANCES]
                kind = (libvirt_events.DOMAIN_EVENT_SUSPENDED if len(sent[
                    uuid]) % 2 == 0
                        else libvirt_events.DOMAIN_EVENT_RESUMED)
                sent[uuid].append(kind)
                self.loop.add(self.emit_step(self.conn, uuid, kind))

        counts = Counts(self.ledger)
        burst(100)
        old_conn = host._wrapped_conn
        self.loop.add(functools.partial(
            host._close_callback, old_conn,
            'End of file while reading data: Input/output error', None))
        self.assertTrue(resynced.wait(WAIT))
        self.assertEqual(4, connect.call_count)
        self.assertEqual(3, self.log.count('Reconnecting to libvirt failed'))
        burst(100)
        delta = counts.wait_ended(200)
        self.assertEqual(200, delta['delivered'], delta)
        self.assertEqual([], self.loop.escaped)
        for uuid in self.uuids:
            self.assertEqual(sent[uuid], self.listener.libvirt_events(uuid))
        # Initial connection, lost, back.
        self.assertEqual([True, False, True],
                         [c.args[-2]
                          for c in self.set_host_enabled.call_args_list])
        self.assertTrue(wait_until(
            lambda: not self.driver._reconnector.is_running() and
            not self.driver._resyncer.is_running()))
        self.assertIn(libvirt_loop.THREAD_NAME, concurrency.plugin_threads())
        self.stop_and_check_threads()

    def test_shutdown_in_the_middle_of_a_burst(self):
        # Every STOPPED stays held until a later event or the shutdown
        # (the test takes a second or two, more on a loaded machine).
        self.flags(stopped_event_grace=15, stopped_event_delay=60,
                   group='lifecycle')
        kinds = [
            libvirt_events.DOMAIN_EVENT_SUSPENDED,
            libvirt_events.DOMAIN_EVENT_RESUMED,
            libvirt_events.DOMAIN_EVENT_STOPPED,
            libvirt_events.DOMAIN_EVENT_STARTED,
            libvirt_events.DOMAIN_EVENT_STOPPED]
        script = [(self.uuids[i % self.INSTANCES],
                   kinds[(i // self.INSTANCES) % len(kinds)])
                  for i in range(1000)]
        handler = self.driver.event_handler
        handler_stop = handler.stop
        stop_requested = concurrency.native_threading().Event()

        def stop(*args, **kwargs):
            stop_requested.set()
            return handler_stop(*args, **kwargs)

        self.useFixture(fixtures.MockPatchObject(handler, 'stop',
                                                 side_effect=stop))
        gate_ran = []

        def until_stop_requested():
            # Keeps libvirt mid-burst until the service stops libvirt's
            # loop; the stop takes effect at the end of an iteration.
            gate_ran.append(True)
            if not stop_requested.wait(WAIT):
                raise AssertionError('cleanup_host never stopped the loop')

        counts = Counts(self.ledger)
        for n, (uuid, kind) in enumerate(script):
            if n == 437:
                self.loop.add(until_stop_requested)
            self.loop.add(self.emit_step(self.conn, uuid, kind))
        self.assertTrue(self.loop.wait_ran(300))
        # Under eventlet the inbox's green thread takes the loop's events
        # in a little later.
        self.assertTrue(wait_until(
            lambda: self.ledger.snapshot()['pending'] > 0))
        self.driver.cleanup_host('compute1')
        self.assertEqual([], concurrency.plugin_threads())
        self.assertFalse(handler.status()['running'])
        self.assertEqual([], self.loop.escaped)
        emitted = script[:self.loop.ran - len(gate_ran)]
        self.assertLess(len(emitted), len(script))
        delta = counts.wait_ended(len(emitted))
        self.assertEqual({}, delta['failed_by_error'])
        kinds_of = collections.defaultdict(list)
        for uuid, kind in emitted:
            kinds_of[uuid].append(kind)
        # A STOPPED with a later event of its instance was superseded; one
        # that was the last was still held, and the shutdown cancelled it
        # with a log line; every other event was delivered.
        held = [u for u, kinds in kinds_of.items()
                if kinds[-1] == libvirt_events.DOMAIN_EVENT_STOPPED]
        superseded = sum(
            kinds[:-1].count(libvirt_events.DOMAIN_EVENT_STOPPED)
            for kinds in kinds_of.values())
        reasons = dict(delta['cancelled_by_reason'])
        self.assertEqual(len(held), reasons.pop('shutdown', 0), delta)
        self.assertEqual(superseded, sum(reasons.values()), delta)
        self.assertTrue(all(reason.startswith('superseded by ')
                            for reason in reasons), reasons)
        self.assertEqual(len(emitted) - len(held) - superseded,
                         delta['delivered'])
        for uuid in held:
            self.assertIn('Pending STOPPED event for instance %s dropped by '
                          'shutdown' % uuid, self.log)
        for uuid in self.uuids:
            self.assertEqual(
                [k for u, k in emitted if u == uuid and
                 k != libvirt_events.DOMAIN_EVENT_STOPPED],
                self.listener.libvirt_events(uuid))

    def test_failing_loop_iterations_do_not_stop_the_loop(self):
        handler = self.driver.event_handler
        failures = [3]
        iteration = self.loop._iteration

        def failing_then_working():
            # virEventRunDefaultImpl itself fails, not a callback.
            if failures[0]:
                failures[0] -= 1
                raise libvirt_error('internal error: poll failed',
                                    fakelibvirt.VIR_ERR_INTERNAL_ERROR, 0)
            iteration()

        self.useFixture(fixtures.MonkeyPatch(
            'nova.tests.fixtures.libvirt.virEventRunDefaultImpl',
            failing_then_working))
        self.assertTrue(wait_until(
            lambda: handler.status()['failures'] == 3), handler.status())
        self.assertIn('poll failed', handler.status()['last error'])
        counts = Counts(self.ledger)
        self.loop.add(self.emit_step(self.conn, self.uuids[0],
                                     libvirt_events.DOMAIN_EVENT_SUSPENDED))
        self.assertEqual(1, counts.wait_ended(1)['delivered'])
        self.assertTrue(handler.status()['running'])
        self.stop_and_check_threads()


class ExecutorFaultTest(test_event_path.EventPathTestCase):
    """The dispatch executor refuses, rejects, breaks or is saturated."""

    UUID_C = 'cccccccc-0000-0000-0000-000000000003'

    def make_on(self, executor, workers=1, **conf):
        """An event path whose dispatch runs on ``executor``.

        The EventPath makes its executor in its constructor
        (``concurrency.make_executor(workers, name)``); that call returns
        ``executor`` here. The path shuts it down when it stops.
        """
        factory = self.useFixture(fixtures.MockPatch(
            'nova_lifecycle.concurrency.make_executor',
            return_value=executor)).mock
        p = self.make(workers=workers, **conf)
        factory.assert_called_once_with(workers, 'lifecycle-dispatch')
        return p

    def wait_running(self, p, queued=0):
        """Wait until only ``queued`` items wait for a worker."""
        self.assertTrue(wait_until(
            lambda: p.status().dispatch_queue == queued), p.status())

    def test_executor_shut_down_under_the_path(self):
        executor = concurrency.make_executor(2, 'lifecycle-dispatch')
        executor.shutdown(wait=True)
        # A held STOPPED goes on after the grace (none) once a driver
        # operation on its instance ends; no domain at the re-check.
        p = self.make_on(executor, workers=2, fast=True, grace=0)
        p.queue(lifecycle(UUID_A, EVENT_PAUSED))
        p.queue(lifecycle(UUID_B, EVENT_STOPPED))
        self.assertTrue(lc_fixtures.wait_received(p, 2, WAIT))
        (uuid, left), = p.status().held
        self.assertEqual(UUID_B, uuid)
        self.assertGreater(left, 50)
        # The held STOPPED reaches the executor once its hold is over,
        # brought forward here by the end of an operation on B.
        with p.track(UUID_B, 'reboot'):
            pass
        stats = self.wait_ended(p, 2)
        self.assertEqual([], p.status().held)
        self.assertEqual({'RuntimeError': 2}, stats['failed_by_error'])
        self.assertIn('executor refused work', self.logs.output)
        p.stop()
        self.assertEqual([], concurrency.plugin_threads())

    def test_rejecting_executor_fails_only_what_it_rejects(self):
        pool = (futurist.ThreadPoolExecutor if concurrency.threading_mode()
                else futurist.GreenThreadPoolExecutor)
        p = self.make_on(pool(
            max_workers=1,
            check_and_reject=rejection.reject_when_reached(1)))
        self.recorder.gate.clear()
        a, b, c = UUID_A, UUID_B, self.UUID_C
        p.queue(lifecycle(a, EVENT_PAUSED))
        self.assertTrue(lc_fixtures.wait_received(p, 1, WAIT))
        self.wait_running(p)
        # Behind A's running event, in A's own queue.
        p.queue(lifecycle(a, EVENT_RESUMED))
        p.queue(lifecycle(a, EVENT_PAUSED))
        # B waits in the executor's backlog; C finds it full.
        p.queue(lifecycle(b, EVENT_PAUSED))
        p.queue(lifecycle(c, EVENT_PAUSED))
        self.assertTrue(p.wait_for_counts(lambda s: s['failed'] == 1,
                                          WAIT))
        self.recorder.gate.set()
        # A's next turn is refused too (B is still in the backlog): A's
        # queued events fail with the rejection instead of waiting forever.
        stats = self.wait_ended(p, 5)
        self.assertEqual({'RejectedSubmission': 3}, stats['failed_by_error'])
        self.assertEqual(2, stats['delivered'])
        self.assertEqual([EVENT_PAUSED], self.recorder.transitions(a))
        self.assertEqual([EVENT_PAUSED], self.recorder.transitions(b))
        # Every instance recovers once the backlog is gone.
        for n, uuid in enumerate((a, c)):
            p.queue(lifecycle(uuid, EVENT_STARTED))
            stats = self.wait_ended(p, 6 + n)
        self.assertEqual(4, stats['delivered'])
        self.assertEqual(3, stats['failed'])
        self.assertEqual([EVENT_STARTED], self.recorder.transitions(c))

    def test_broken_pool_fails_queued_events_instead_of_hanging(self):
        def broken():
            raise RuntimeError('cannot start a worker')

        p = self.make_on(cf.ThreadPoolExecutor(
            1, initializer=broken, thread_name_prefix='lifecycle-test-pool'))
        p.queue(lifecycle(UUID_A, EVENT_PAUSED))
        p.queue(lifecycle(UUID_A, EVENT_RESUMED))
        p.queue(lifecycle(UUID_B, EVENT_PAUSED))
        stats = self.wait_ended(p, 3)
        self.assertEqual({'BrokenThreadPool': 3}, stats['failed_by_error'])
        self.assertEqual([], self.recorder.transitions())
        # No instance is left waiting for a task the pool never runs: a
        # later event of each is not queued behind one, it fails too.
        p.queue(lifecycle(UUID_A, EVENT_STARTED))
        p.queue(lifecycle(UUID_B, EVENT_STARTED))
        stats = self.wait_ended(p, 5)
        self.assertEqual({'BrokenThreadPool': 5}, stats['failed_by_error'])
        self.assertEqual(0, p.status().dispatch_queue)
        p.stop()
        self.assertEqual([], concurrency.plugin_threads())

    def test_executor_cancelling_its_queue_cancels_the_events(self):
        pool = cf.ThreadPoolExecutor(1,
                                     thread_name_prefix='lifecycle-test-pool')
        p = self.make_on(pool)
        self.recorder.gate.clear()
        for uuid in (UUID_A, UUID_B, self.UUID_C):
            p.queue(lifecycle(uuid, EVENT_PAUSED))
        self.assertTrue(lc_fixtures.wait_received(p, 3, WAIT))
        self.wait_running(p, queued=2)
        pool.shutdown(wait=False, cancel_futures=True)
        self.recorder.gate.set()
        stats = self.wait_ended(p, 3)
        self.assertEqual(1, stats['delivered'])
        self.assertEqual({'shutdown': 2}, stats['cancelled_by_reason'])

    def test_saturated_executor_never_blocks_the_caller(self):
        p = self.make(workers=2)
        self.recorder.gate.clear()
        uuids = ['%08d-0000-0000-0000-000000000000' % i for i in range(50)]
        sent = collections.defaultdict(list)
        for i in range(200):
            uuid = uuids[i % len(uuids)]
            sent[uuid].append(EVENT_PAUSED if i % 100 < 50
                              else EVENT_RESUMED)

        def libvirt_loop():
            for i in range(200):
                uuid = uuids[i % len(uuids)]
                p.queue(lifecycle(uuid, sent[uuid][i // len(uuids)]))

        loop = concurrency.native_threading().Thread(
            target=libvirt_loop, name='fake-libvirt-loop')
        loop.start()
        loop.join(WAIT)
        # Every call returned while both workers were blocked.
        self.assertFalse(loop.is_alive())
        self.assertTrue(lc_fixtures.wait_received(p, 200, WAIT))
        self.wait_running(p, queued=198)
        stats = p.status().counts
        self.assertEqual(200, stats['pending'])
        self.assertTrue(lc_fixtures.balanced(stats), stats)
        self.recorder.gate.set()
        self.assertEqual(200, self.wait_ended(p, 200)['delivered'])
        for uuid in uuids:
            self.assertEqual(sent[uuid], self.recorder.transitions(uuid))

    def test_unexpected_error_inside_the_dispatch_worker(self):
        next_item = dispatch.KeyedDispatcher._next_item
        broken = [RuntimeError('bug in the drain task')]

        def next_item_once_broken(dispatcher, key, queue):
            if broken:
                raise broken.pop()
            return next_item(dispatcher, key, queue)

        # The path's dispatcher is built with the path: patched before.
        self.useFixture(fixtures.MonkeyPatch(
            'nova_lifecycle.common.dispatch.KeyedDispatcher._next_item',
            next_item_once_broken))
        p = self.make(workers=1)
        p.queue(lifecycle(UUID_A, EVENT_PAUSED))
        p.queue(lifecycle(UUID_A, EVENT_RESUMED))
        stats = self.wait_ended(p, 2)
        self.assertEqual([], broken)
        self.assertEqual(2, stats['delivered'])
        self.assertEqual([EVENT_PAUSED, EVENT_RESUMED],
                         self.recorder.transitions())
        self.assertIn('unexpected error dispatching work', self.logs.output)

    def test_handler_raising_a_base_exception(self):
        class Interrupted(BaseException):
            """Not an Exception, as GreenletExit."""

        p = self.make(workers=1)

        def interrupted_on_pause(event):
            if event.transition == EVENT_PAUSED:
                raise Interrupted()
            return self.recorder(event)

        # What the path delivers to (make's deliver calls self.listener).
        self.listener = interrupted_on_pause
        p.queue(lifecycle(UUID_A, EVENT_PAUSED))
        p.queue(lifecycle(UUID_A, EVENT_RESUMED))
        p.queue(lifecycle(UUID_B, EVENT_STARTED))
        stats = self.wait_ended(p, 3)
        self.assertEqual({'Interrupted': 1}, stats['failed_by_error'])
        self.assertEqual(2, stats['delivered'])


class InboxFaultTest(test_event_path.EventPathTestCase):

    def test_event_put_just_as_the_inbox_stops_is_not_lost(self):
        late = lifecycle(UUID_A, EVENT_PAUSED)
        made = []
        make_inbox = inbox.make_inbox

        def make_racing_inbox(handler, name, green):
            box = make_inbox(handler, name, green)
            made.append(box)
            stop_inbox = box.stop

            def stop_with_a_late_put(timeout=None):
                # libvirt's loop, in a queue() that began before stop(),
                # puts one more event while the inbox stops: under
                # eventlet, right after its reader took the stop marker.
                reader = getattr(box, '_thread', None)
                if reader is None:
                    box.put(late)
                else:
                    join = reader.join

                    def join_then_put(timeout=None):
                        join(timeout)
                        box.put(late)

                    reader.join = join_then_put
                return stop_inbox(timeout)

            box.stop = stop_with_a_late_put
            return box

        # The path makes its inbox in its constructor: patched before.
        self.useFixture(fixtures.MonkeyPatch(
            'nova_lifecycle.common.inbox.make_inbox', make_racing_inbox))
        p = self.make()
        self.assertEqual(1, len(made))
        p.stop()
        stats = p.status().counts
        self.assertEqual(1, stats['received'], stats)
        self.assertEqual(1, stats['delivered'], stats)
        self.assertEqual([late], self.recorder.events)
        # Once stopped, a late event is counted as cancelled, not raised.
        p.queue(late)
        stats = p.status().counts
        self.assertEqual({'shutdown': 1}, stats['cancelled_by_reason'])


class DelayedExecutorFaultTest(base.TestCase):
    """A held task fails, or its owner gives up on it: its Future ends."""

    def setUp(self):
        super().setUp()
        self.useFixture(lc_fixtures.NoThreadLeftBehind())

    def make(self):
        d = delayed.DelayedExecutor('lifecycle-test-delayed')
        self.addCleanup(d.shutdown, wait=True, cancel_futures=True)
        return d

    def test_task_that_raises_ends_with_its_error_and_the_next_runs(self):
        error = RuntimeError('cannot queue the event')

        def broken():
            raise error

        d = self.make()
        future = d.submit_after(0, broken)
        self.assertIs(error, future.exception(WAIT))
        self.assertEqual(1, d.submit_after(0, int, 1).result(WAIT))
        self.assertTrue(d.is_alive())

    def test_cancel_racing_the_deadline_ends_every_future_once(self):
        d = self.make()
        ran = collections.Counter()
        results = []

        def racer(n):
            mine = []
            for i in range(300):
                future = d.submit_after(0, ran.update, [(n, i)])
                mine.append((n, i, future, future.cancel()))
            results.extend(mine)

        threads = [threading.Thread(target=racer, args=(n,),
                                    name='lifecycle-test-racer-%d' % n)
                   for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT)
        done, not_done = cf.wait([r[2] for r in results], WAIT)
        self.assertEqual(set(), not_done)
        for n, i, future, cancelled in results:
            # cancel() True: never ran; False: it had started, ran once.
            self.assertEqual(0 if cancelled else 1, ran[(n, i)])
            self.assertEqual(cancelled, future.cancelled())
        self.assertEqual(0, d.pending_count())

    def test_task_shutting_down_its_executor_cancels_the_rest(self):
        d = self.make()
        rest = [d.submit_after(3600, int, i) for i in range(3)]

        def give_up():
            d.shutdown(wait=False, cancel_futures=True)
            return 'gave up'

        self.assertEqual('gave up', d.submit_after(0, give_up).result(WAIT))
        done, not_done = cf.wait(rest, WAIT)
        self.assertEqual(set(rest), done)
        self.assertTrue(all(future.cancelled() for future in rest))
        self.assertTrue(wait_until(lambda: not d.is_alive()))
