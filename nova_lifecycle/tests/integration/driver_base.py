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

"""The plugin's driver on a real libvirtd: test base and recording manager.

:class:`DriverTestCase` builds a ``LibvirtLifecycleDriver`` the way
nova-compute does (``__init__`` with a VirtAPI, ``register_event_listener``
with the compute manager's ``handle_events``, ``init_host``) connected to
``qemu:///system`` with ``virt_type = qemu``. Between libvirtd and the
listener there is only the plugin: its libvirt event loop thread, its Host,
its pipeline and delayed executor. Two things stand in for the rest of
nova-compute:

* :class:`RecordingManager` is a ``ComputeManager`` (so the plugin hooks
  it as it hooks the real one) whose ``handle_events`` records every event
  with the time it arrived, and whose ``_sync_power_states`` records that
  a resync ran and what the driver's bulk power-state query returned;
* there is no database: ``_set_host_enabled`` (the compute service
  record) is recorded instead of written, and Nova 33's init_host does not
  look up this host's instances (there are none).

The plugin takes in only the events of the domains the test made (see
``_take_own_events_only``): other tests run domains on the same libvirtd.

The test also opens its own connection to libvirtd, served by the plugin's
event loop thread, whose callbacks record libvirt's raw events
(:class:`base.EventRecorder`): the reference timeline the plugin's
deliveries are compared with.
"""

import collections
import os
import random
import threading
import time
import uuid

import fixtures
from nova.compute import manager as compute_manager
from nova.compute import utils as compute_utils
from nova import conf as nova_conf
from nova import context as nova_context
from nova.tests import fixtures as nova_fixtures
from nova.tests.unit import fake_instance
from nova.virt import fake
from nova.virt.libvirt import driver as libvirt_driver

from nova_lifecycle import conf  # noqa: F401 (registers [lifecycle])
from nova_lifecycle.tests import base as lc_base
from nova_lifecycle.tests import fixtures as lc_fixtures
from nova_lifecycle.tests.integration import base
from nova_lifecycle.virt import driver as lc_driver

libvirt = base.libvirt
CONF = nova_conf.CONF

HOST = 'nlc-it-compute'
# Domain names as Nova makes them ('instance-%08x' % id), with ids far
# above what a real deployment on this machine (the main job) hands out.
_ID_RANGE = (0x70000000, 0x7fffffff)

Delivery = collections.namedtuple('Delivery', 'at event thread')
Resync = collections.namedtuple('Resync', 'at domains states')


class RecordingManager(compute_manager.ComputeManager):
    """The compute manager's place: records, never touches a database.

    ``ComputeManager.__init__`` (RPC clients, resource tracker...) is not
    run; the driver only needs ``handle_events`` and, for the resync after
    a lost connection, ``_sync_power_states``.

    :param handler_delay: ``handler_delay(event)`` -> seconds the handler
        takes for that event (a slow database, a busy conductor).
    """

    def __init__(self, host, driver, handler_delay=None):
        self.host = host
        self.driver = driver
        self._handler_delay = handler_delay
        self._cond = threading.Condition()
        self.deliveries = []
        self.handling = []
        self.resyncs = []

    def handle_events(self, event):
        """Record the event as delivered now, then take the handler's time.

        ``deliveries`` has it at once; ``handling`` lists the deliveries
        whose handler has not returned yet.
        """
        delivery = Delivery(time.monotonic(), event,
                            threading.current_thread().name)
        delay = self._handler_delay(event) if self._handler_delay else 0
        with self._cond:
            self.deliveries.append(delivery)
            if delay:
                self.handling.append(delivery)
            self._cond.notify_all()
        if delay:
            time.sleep(delay)
            with self._cond:
                self.handling.remove(delivery)
                self._cond.notify_all()

    def _sync_power_states(self, context):
        # The real one starts with the driver's instance count, where the
        # plugin takes its bulk snapshot of every domain's state.
        domains = self.driver.get_num_instances()
        states = self.driver._recent_power_states()
        with self._cond:
            self.resyncs.append(Resync(time.monotonic(), domains, states))
            self._cond.notify_all()

    def wait_until(self, predicate, timeout=base.WAIT):
        """Wait until ``predicate(self)`` holds; True if it did."""
        with self._cond:
            return self._cond.wait_for(lambda: predicate(self), timeout)

    def of(self, instance_uuid):
        """Deliveries of one instance, in the order they arrived."""
        with self._cond:
            return [d for d in self.deliveries
                    if d.event.uuid == instance_uuid]

    def names(self, instance_uuid):
        """'Started', 'Stopped'... for one instance, in order."""
        return [d.event.get_name() for d in self.of(instance_uuid)]

    def wait_for(self, instance_uuid, name, count=1, timeout=base.WAIT):
        """The count-th delivery named ``name`` of the instance, or None."""
        def seen(manager):
            return manager.names(instance_uuid).count(name) >= count

        if not self.wait_until(seen, timeout):
            return None
        return [d for d in self.of(instance_uuid)
                if d.event.get_name() == name][count - 1]


def release_connection(conn):
    """Deregister what a connection's callbacks hold, then close it.

    A registered domain event callback holds a reference on its
    connection: without this, a driver's connection outlives its test and
    its callbacks keep running on the next test's event loop.
    """
    if conn is None:
        return
    try:
        for callback_id in list(getattr(conn, 'domainEventCallbackID', {})):
            conn.domainEventDeregisterAny(callback_id)
        conn.unregisterCloseCallback()
    except libvirt.libvirtError:
        pass  # a connection libvirtd dropped has nothing left to undo
    try:
        conn.close()
    except libvirt.libvirtError:
        pass


class DriverTestCase(lc_base.TestCase):
    """A ``LibvirtLifecycleDriver`` on ``qemu:///system``, started.

    Class attributes set the ``[lifecycle]`` options;
    ``exclusive_daemon`` takes libvirtd for this test alone (to kill it,
    to load the machine, or to measure tight timings).
    Nova's configuration and log capture come from Nova's own fixtures;
    Nova's unit-test base is not used, as it forbids looking at the host
    (os.uname, interfaces) that the driver must look at here.
    """

    # The wait for the libvirtd lock comes on top of the test's own time.
    timeout = base.TEST_TIMEOUT + base.LOCK_WAIT
    stopped_event_delay = 15.0
    stopped_event_grace = 2.0
    dispatch_workers = 16
    exclusive_daemon = False

    def handler_delay(self, event):
        """Seconds the recording manager takes for ``event``."""
        return 0

    def setUp(self):
        super().setUp()
        problem = base.hypervisor_problem()
        if problem:
            base.skip_or_fail(self, problem)
        self.useFixture(lc_fixtures.NoThreadLeftBehind())
        self.useFixture(base.DaemonLock(exclusive=self.exclusive_daemon))
        self.useFixture(nova_fixtures.ConfFixture(CONF))
        self.stdlog = self.useFixture(nova_fixtures.StandardLogging())
        # Nova's Host notifies a failed connection to libvirt (to no
        # driver here); the test records that it did. Nova's fake notifier
        # is not used: it wants every sender to be one of Nova's own
        # eventlets, which the plugin's threads are not.
        self.useFixture(nova_fixtures.RPCFixture('nova.test'))
        self.connect_errors = []
        notify = compute_utils.notify_about_libvirt_connect_error

        def record_connect_error(context, ip, exception):
            self.connect_errors.append((time.monotonic(), exception))
            return notify(context, ip=ip, exception=exception)

        self.useFixture(fixtures.MockPatch(
            'nova.compute.utils.notify_about_libvirt_connect_error',
            side_effect=record_connect_error))
        self.tmp = self.useFixture(fixtures.TempDir()).path
        self.flags(instances_path=self.tmp)
        self.flags(virt_type='qemu', connection_uri=base.URI,
                   group='libvirt')
        self.flags(stopped_event_delay=self.stopped_event_delay,
                   stopped_event_grace=self.stopped_event_grace,
                   dispatch_workers=self.dispatch_workers,
                   group='lifecycle')
        self.host_enabled = []
        self.useFixture(fixtures.MockPatchObject(
            libvirt_driver.LibvirtDriver, '_set_host_enabled',
            autospec=True, side_effect=self._record_host_enabled))
        # Nova 33's init_host reads this host's instances from the database
        # (to note their undefined details); there are none here.
        if hasattr(libvirt_driver.LibvirtDriver,
                   '_register_all_undefined_instance_details'):
            self.useFixture(fixtures.MockPatchObject(
                libvirt_driver.LibvirtDriver,
                '_register_all_undefined_instance_details'))
        self.context = nova_context.get_admin_context()
        self._template = base.load_template()
        self.guests = []
        self.addCleanup(base.report_guests, self, self.guests)

        self.driver = lc_driver.LibvirtLifecycleDriver(fake.FakeVirtAPI(),
                                                       False)
        self.own = set()
        self._take_own_events_only()
        self.manager = RecordingManager(HOST, self.driver,
                                        self.handler_delay)
        # Kept past stop_driver, which drops self.driver.
        self.event_path = self.driver.event_path
        self.driver.register_event_listener(self.manager.handle_events)
        self.addCleanup(self.stop_driver)
        started = time.monotonic()
        self.driver.init_host(HOST)
        self.init_host_seconds = time.monotonic() - started
        self.recorder = base.EventRecorder()
        self.conn = None
        self.addCleanup(self._release_test_connection)
        self.open_test_connection()

    def _take_own_events_only(self):
        """Let only the events of this test's domains into the plugin.

        libvirtd sends every domain's events to every connection, and
        other tests (the other stestr worker, the main job) run domains on
        the same daemon; their events would make this test's counts
        depend on them. The filter sits where the plugin's libvirt
        callback hands its instance event over (``event_path.queue``), on
        libvirt's loop thread; what it lets through is handled as always.
        Connection notices do not go through the event path and always
        reach the Host.
        """
        event_path = self.driver.event_path
        queue = event_path.queue
        own = self.own

        def own_events_only(event):
            instance_uuid = getattr(event, 'uuid', None)
            if instance_uuid is None or instance_uuid in own:
                queue(event)

        event_path.queue = own_events_only

    def flags(self, **kw):
        """Override options for this test (reset by ConfFixture)."""
        group = kw.pop('group', None)
        for name, value in kw.items():
            CONF.set_override(name, value, group)

    def _record_host_enabled(self, driver, enabled, reason=None):
        self.host_enabled.append((time.monotonic(), enabled, reason))

    def stop_driver(self):
        """What the compute manager's cleanup_host does, then release."""
        if self.driver is None:
            return
        driver, self.driver = self.driver, None
        driver.register_event_listener(None)
        driver.cleanup_host(HOST)
        release_connection(driver._host._wrapped_conn)

    def open_test_connection(self):
        """The test's own connection; its callbacks record libvirt's events.

        Served by the plugin's event loop thread (the process has one
        libvirt event loop). Waits for libvirtd if it is restarting.
        """
        conn = base.open_connection()
        conn.domainEventRegisterAny(None,
                                    libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                    self.recorder.lifecycle, None)
        self._release_test_connection()
        self.conn = conn
        for guest in self.guests:
            guest.dom = self._lookup(guest.uuid) or guest.dom
        return conn

    def _release_test_connection(self):
        conn, self.conn = self.conn, None
        release_connection(conn)

    def _lookup(self, instance_uuid):
        if not self.conn.isAlive():
            # libvirtd was restarted under it.
            self.open_test_connection()
        try:
            return self.conn.lookupByUUIDString(instance_uuid)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise

    # Instances

    def make_instance(self):
        """A Nova instance object, named as Nova names its domain."""
        instance = fake_instance.fake_instance_obj(
            self.context, uuid=str(uuid.uuid4()),
            id=random.randint(*_ID_RANGE), host=HOST)
        # What the driver reads and would otherwise load from the DB.
        instance.numa_topology = None
        instance.system_metadata = {}
        return instance

    def start_instance(self, cmdline, on_crash='destroy'):
        """Define and start the test guest as Nova does; a base.Guest.

        The domain is persistent (defined, then started, through the
        driver's Host like Nova's ``_create_guest``); it is destroyed and
        undefined in cleanup. The Guest carries ``instance`` and ``uuid``.
        """
        instance = self.make_instance()
        self.own.add(instance.uuid)
        console = os.path.join(self.tmp, instance.name + '.console')
        xml = self.instance_xml(instance, cmdline, console, on_crash)
        created_at = time.monotonic()
        self.addCleanup(base.remove_qemu_log, instance.name)
        nova_guest = self.driver._host.write_instance_config(xml)
        self.addCleanup(self.remove_domain, instance.uuid)
        nova_guest.launch()
        guest = base.Guest(self, self.conn.lookupByUUIDString(instance.uuid),
                           instance.name, cmdline, console, self.recorder,
                           created_at)
        guest.instance = instance
        guest.uuid = instance.uuid
        self.guests.append(guest)
        return guest

    def start_paused(self, conn=None, instance_uuid=None, prefix='nlc-it'):
        """A transient minimal domain started paused; (name, domain).

        It never runs a guest: for tests that only need a domain's events.
        Destroyed in cleanup if still there.
        """
        conn = conn or self.conn
        instance_uuid = instance_uuid or str(uuid.uuid4())
        self.own.add(instance_uuid)
        name = '%s-%s' % (prefix, instance_uuid[:13])
        self.addCleanup(base.remove_qemu_log, name)
        dom = conn.createXML(base.MINIMAL_DOMAIN % {
            'name': name, 'uuid': instance_uuid},
            libvirt.VIR_DOMAIN_START_PAUSED)
        self.addCleanup(self.remove_domain, instance_uuid)
        return name, dom

    def instance_xml(self, instance, cmdline, console, on_crash='destroy'):
        return base.domain_xml(self._template, instance.name, instance.uuid,
                               cmdline, console, on_crash)

    def remove_domain(self, instance_uuid):
        """Destroy and undefine, whichever of the two is left to do.

        Tried again once on a new connection if libvirtd went away
        meanwhile (something restarted it).
        """
        try:
            self._remove_domain(instance_uuid)
        except libvirt.libvirtError:
            if self.conn.isAlive():
                raise
            self._remove_domain(instance_uuid)

    def _remove_domain(self, instance_uuid):
        dom = self._lookup(instance_uuid)
        if dom is None:
            return
        for step in (dom.destroy, dom.undefine):
            try:
                step()
            except libvirt.libvirtError as exc:
                if exc.get_error_code() not in (
                        libvirt.VIR_ERR_NO_DOMAIN,
                        libvirt.VIR_ERR_OPERATION_INVALID):
                    raise

    # What the plugin did

    def libvirt_event_time(self, guest, name, count=1):
        """When the test's connection saw libvirt's event ``name``."""
        times = [t for t, what in self.recorder.entries(guest.name)
                 if what == name]
        self.assertGreaterEqual(len(times), count,
                                '%s: no %s (x%d)\n%s'
                                % (guest.name, name, count,
                                   '\n'.join(guest.timeline())))
        return times[count - 1]

    def assertLedgerSettled(self, received=None, timeout=base.WAIT):
        """Every event received has ended; the ledger's identity holds.

        :returns: the ledger's snapshot.
        """
        event_path = self.event_path
        settled = event_path.wait_for_counts(
            lambda s: s['pending'] == 0 and
            (received is None or s['received'] >= received), timeout)
        stats = event_path.status().counts
        self.assertTrue(settled, 'ledger not settled: %s' % stats)
        self.assertTrue(lc_fixtures.balanced(stats), stats)
        self.assertEqual(stats['received'],
                         stats['delivered'] + stats['cancelled'] +
                         stats['failed'] + stats['pending'], stats)
        return stats
