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

"""Nova operations on the plugin, with the events real libvirt sends.

What the scenarios of ``test_operations.py`` (one compute) and
``test_migrations.py`` (two computes) share:

* :class:`StoppedFates` (through :class:`FollowStoppedEvents`) records,
  per compute, each STOPPED event as it is held (with the driver
  operations in progress then, and for how long) and as it is delivered
  to the compute manager (with the domain's state right before), so a
  scenario can show that a STOPPED held during an operation was
  cancelled, or re-checked and delivered only for a domain that is off.
* :class:`StartAndSaveEvents` and :class:`LiveMigrationEvents` make Nova's
  fake libvirt send what libvirt sends when a domain starts, for a managed
  save (a cold snapshot) and for a live migration;
  :class:`base.RealisticDomainEvents` already does destroy and shutdown.
* :meth:`OperationsTestBase.assert_operation` checks the end of an
  operation: the API's state, no compute API ``stop`` or ``force_stop``
  call at all, and the ledger of every compute.
"""

import threading
import weakref

import fixtures
from nova.tests.fixtures import libvirt as fakelibvirt
from nova.virt import event as virtevent
from nova.virt.libvirt import utils as libvirt_utils
from oslo_utils import fileutils

from nova_lifecycle.eventpath import libvirt_events
from nova_lifecycle.eventpath import policy
from nova_lifecycle.tests.functional import base
from nova_lifecycle.virt import driver as lc_driver

# libvirt's event details the fake has no names for.
SUSPENDED_PAUSED = 0
SUSPENDED_MIGRATED = 1
STARTED_MIGRATED = 1
STARTED_RESTORED = 2
RESUMED_UNPAUSED = 0
RESUMED_MIGRATED = 1
RESUMED_FROM_SNAPSHOT = 2
STOPPED_MIGRATED = 3
STOPPED_SAVED = 4
DEFINED, RESUMED = 0, 4

PAUSED = fakelibvirt.VIR_DOMAIN_PAUSED
# Domain states in which a STOPPED event must not reach Nova (running,
# blocked, paused, suspended by the guest).
UP_STATES = (base.RUNNING, 2, PAUSED, 7)

# stopped_event_delay when fast_stopped_events is off: upstream's
# behaviour, with a delay short enough for a test to wait it out.
UPSTREAM_DELAY = 1.0


def domain_of(connection, uuid):
    """The fake connection's domain with this UUID, or None."""
    for dom in list(connection._vms.values()):
        if dom.UUIDString() == uuid:
            return dom
    return None


def domain_state(connection, uuid):
    """libvirt's state number of the domain, None when there is none."""
    dom = domain_of(connection, uuid)
    return None if dom is None else dom._state


def start_silently(connection, dom):
    """Make the domain run without the fake's own STARTED event."""
    dom._state = base.RUNNING
    dom._id = connection._id_counter
    connection._running_vms[connection._id_counter] = dom
    connection._id_counter += 1


def stop_silently(connection, dom):
    """Make the domain shut off without the fake's own STOPPED event."""
    dom._state = base.SHUTOFF
    dom._id = -1
    for domain_id, running in list(connection._running_vms.items()):
        if running is dom:
            del connection._running_vms[domain_id]


def _is_stopped(event):
    return (isinstance(event, virtevent.LifecycleEvent) and
            event.transition == virtevent.EVENT_LIFECYCLE_STOPPED)


class FollowStoppedEvents(fixtures.Fixture):
    """Where each followed driver holds and delivers its STOPPED events.

    The two places are bound when a driver is built, so this fixture is
    set up before any compute starts:

    * ``StoppedPolicy.hold_for`` (eventpath/policy.py), called as a
      STOPPED comes in, chooses its hold; the policy is built by the
      driver's event path with the driver's operations and its
      ``_live_domain_state``, which name the driver;
    * the driver's ``_deliver_event``, which its event path calls to give
      an event to the compute manager (a STOPPED after its re-check).

    :class:`StoppedFates` records them for one driver.
    """

    def _setUp(self):
        self._lock = threading.Lock()
        # StoppedPolicy -> (its driver, the operations it reads).
        self._policies = weakref.WeakKeyDictionary()
        self._fates = {}
        self.addCleanup(self._fates.clear)
        init = policy.StoppedPolicy.__init__
        hold_for = policy.StoppedPolicy.hold_for
        deliver = lc_driver.LibvirtLifecycleDriver._deliver_event

        def recording_init(stopped_policy, conf, operations, live_state):
            init(stopped_policy, conf, operations, live_state)
            driver = getattr(live_state, '__self__', None)
            with self._lock:
                self._policies[stopped_policy] = (driver, operations)

        def recording_hold_for(stopped_policy, event):
            with self._lock:
                driver, operations = self._policies.get(stopped_policy,
                                                        (None, None))
                fates = self._fates.get(driver)
            if fates is None:
                return hold_for(stopped_policy, event)
            in_progress = operations.active(event.uuid)
            seconds = hold_for(stopped_policy, event)
            fates.held_one(event, in_progress, seconds)
            return seconds

        def recording_deliver(driver, event):
            with self._lock:
                fates = self._fates.get(driver)
            if fates is None or not _is_stopped(event):
                return deliver(driver, event)
            state = domain_state(fates.connection, event.uuid)
            taken = deliver(driver, event)
            if taken:
                fates.delivered_one(event, state)
            return taken

        self.useFixture(fixtures.MonkeyPatch(
            'nova_lifecycle.eventpath.policy.StoppedPolicy.__init__',
            recording_init))
        self.useFixture(fixtures.MonkeyPatch(
            'nova_lifecycle.eventpath.policy.StoppedPolicy.hold_for',
            recording_hold_for))
        self.useFixture(fixtures.MonkeyPatch(
            'nova_lifecycle.virt.driver.LibvirtLifecycleDriver.'
            '_deliver_event', recording_deliver))

    def follow(self, driver, fates):
        with self._lock:
            followed = any(d is driver for d, _ in self._policies.values())
            self._fates[driver] = fates
        if not followed:
            raise AssertionError('driver %r was built before '
                                 'FollowStoppedEvents' % driver)

    def unfollow(self, driver):
        with self._lock:
            self._fates.pop(driver, None)


class StoppedFates(fixtures.Fixture):
    """How one compute's driver held and delivered STOPPED events.

    ``held``: (instance UUID, libvirt detail name, the driver operations
    in progress on the instance, seconds held) for each STOPPED as it
    comes in. ``delivered``: (instance UUID, detail name, libvirt state of
    the domain right before the manager got the event, None when there was
    no domain) for each STOPPED the manager got.

    :param follow: the test's :class:`FollowStoppedEvents`.
    """

    def __init__(self, follow, driver, connection):
        super().__init__()
        self._follow = follow
        self._driver = driver
        self.connection = connection

    def _setUp(self):
        self._lock = threading.Lock()
        self.held = []
        self.delivered = []
        self._follow.follow(self._driver, self)
        self.addCleanup(self._follow.unfollow, self._driver)

    def held_one(self, event, operations, seconds):
        with self._lock:
            self.held.append((event.uuid, event.detail_name, operations,
                              seconds))

    def delivered_one(self, event, state):
        with self._lock:
            self.delivered.append((event.uuid, event.detail_name, state))

    def mark(self):
        """Where the records are now, for :meth:`held_since` and co."""
        with self._lock:
            return len(self.held), len(self.delivered)

    def held_since(self, mark, uuid=None):
        with self._lock:
            return [h for h in self.held[mark[0]:]
                    if uuid is None or h[0] == uuid]

    def delivered_since(self, mark, uuid=None):
        with self._lock:
            return [d for d in self.delivered[mark[1]:]
                    if uuid is None or d[0] == uuid]


class InstanceFiles(fixtures.Fixture):
    """Instance directories without disks, so that moves can run.

    Nova's libvirt functional base replaces ``_create_image`` with a mock,
    so no instance directory exists; rescue writes ``unrescue.xml`` there
    and a resize renames it. Here ``_create_image`` only creates the
    directory, and an instance has no local disk files to copy.
    """

    def _setUp(self):
        self.useFixture(fixtures.MonkeyPatch(
            'nova.virt.libvirt.LibvirtDriver._create_image',
            self._create_image))
        self.useFixture(fixtures.MonkeyPatch(
            'nova.virt.libvirt.LibvirtDriver._get_instance_disk_info',
            lambda driver, instance, block_device_info: []))

    @staticmethod
    def _create_image(driver, context, instance, *args, **kwargs):
        fileutils.ensure_tree(libvirt_utils.get_instance_path(instance))
        return False, False


class StartAndSaveEvents(fixtures.Fixture):
    """Starts and managed saves as libvirt 9.0 / QEMU 7.2 send them.

    Seen on a real libvirtd (``tests/integration`` and by hand):

    * a start sends RESUMED_UNPAUSED (QEMU starts paused and libvirt lets
      it run), then STARTED_BOOTED; Nova's fake sends STARTED_BOOTED only.
      A start paused on purpose (``VIR_DOMAIN_START_PAUSED``) is left as
      the fake does it;
    * ``managedSave`` sends SUSPENDED_PAUSED then STOPPED_SAVED and leaves
      the domain shut off; the fake sends STOPPED_SHUTDOWN and leaves its
      state RUNNING;
    * starting a saved domain restores it: STARTED_RESTORED, then
      RESUMED_FROM_SNAPSHOT.
    """

    def _setUp(self):
        domain = fakelibvirt.Domain
        self._patch('managedSave', self._managed_save(domain.managedSave))
        self._patch('createWithFlags',
                    self._create_with_flags(domain.createWithFlags))

    def _patch(self, name, new):
        self.useFixture(fixtures.MonkeyPatch(
            'nova.tests.fixtures.libvirt.Domain.' + name, new))

    @staticmethod
    def _managed_save(managed_save):
        def wrapper(dom, flags):
            conn = dom._connection
            if dom._state == base.RUNNING:
                conn._emit_lifecycle(
                    dom, libvirt_events.DOMAIN_EVENT_SUSPENDED,
                    SUSPENDED_PAUSED)
            dom._state = base.SHUTOFF
            dom._lifecycle_stopped_detail = STOPPED_SAVED
            try:
                return managed_save(dom, flags)
            finally:
                del dom._lifecycle_stopped_detail
        return wrapper

    @staticmethod
    def _create_with_flags(create_with_flags):
        def wrapper(dom, flags):
            conn = dom._connection
            if dom.hasManagedSaveImage(0):
                start_silently(conn, dom)
                dom._has_saved_state = False
                conn._emit_lifecycle(
                    dom, libvirt_events.DOMAIN_EVENT_STARTED, STARTED_RESTORED)
                conn._emit_lifecycle(dom, RESUMED, RESUMED_FROM_SNAPSHOT)
                return None
            if not flags & fakelibvirt.VIR_DOMAIN_START_PAUSED:
                dom._state = base.RUNNING
                conn._emit_lifecycle(dom, RESUMED, RESUMED_UNPAUSED)
            # The fake's own start sends STARTED_BOOTED.
            return create_with_flags(dom, flags)
        return wrapper


class LiveMigrationEvents(fixtures.Fixture):
    """A live migration between two fake connections, with its events.

    Replaces the fake's ``migrateToURI3`` (which always fails). The
    sequence follows libvirt's documented behaviour for a pre-copy
    migration with Nova's flags (persistent destination, undefined
    source): the destination defines the domain and starts it paused
    (STARTED_MIGRATED); the source pauses it for the switch-over
    (SUSPENDED_MIGRATED, while its migration job still runs); the
    destination resumes it (RESUMED_MIGRATED); the source stops
    (STOPPED_MIGRATED) and undefines it; then the source's job completes.

    With ``fail_next`` set, the next migration fails before the
    switch-over, as when the connection between the hosts breaks: the
    destination's domain is killed (STOPPED_FAILED) and undefined, the
    source's job fails, the guest runs on at the source, and
    ``migrateToURI3`` raises.

    :param connections: {hostname: fake connection}; the destination is
        the one whose hostname the destination URI names.
    """

    def __init__(self, connections):
        super().__init__()
        self._connections = connections
        self.migrated = []
        self.failed = []
        self.fail_next = False

    def _setUp(self):
        self.useFixture(fixtures.MonkeyPatch(
            'nova.tests.fixtures.libvirt.Domain.migrateToURI3',
            self._migrate))

    def _destination(self, uri):
        for hostname, connection in self._connections.items():
            if '//%s/' % hostname in uri:
                return connection
        raise AssertionError('no compute for migration URI %s' % uri)

    def _migrate(self, dom, dconnuri, params, flags):
        source = dom._connection
        dest = self._destination(dconnuri)
        dom._job_type = fakelibvirt.VIR_DOMAIN_JOB_UNBOUNDED
        new = dest.defineXML(params['destination_xml'])
        start_silently(dest, new)
        dest._emit_lifecycle(
            new, libvirt_events.DOMAIN_EVENT_STARTED, STARTED_MIGRATED)
        if self.fail_next:
            self.fail_next = False
            return self._fail(dom, dest, new)
        dom._state = PAUSED
        source._emit_lifecycle(
            dom, libvirt_events.DOMAIN_EVENT_SUSPENDED, SUSPENDED_MIGRATED)
        dest._emit_lifecycle(new, RESUMED, RESUMED_MIGRATED)
        stop_silently(source, dom)
        source._emit_lifecycle(
            dom, libvirt_events.DOMAIN_EVENT_STOPPED, STOPPED_MIGRATED)
        dom.undefine()
        self.migrated.append(dom.UUIDString())
        dom.complete_job()

    def _fail(self, dom, dest, new):
        stop_silently(dest, new)
        dest._emit_lifecycle(
            new, libvirt_events.DOMAIN_EVENT_STOPPED,
            libvirt_events.DOMAIN_EVENT_STOPPED_FAILED)
        new.undefine()
        self.failed.append(dom.UUIDString())
        dom.fail_job()
        raise fakelibvirt.make_libvirtError(
            fakelibvirt.libvirtError,
            'operation failed: migration out job: unexpectedly failed',
            error_code=fakelibvirt.VIR_ERR_OPERATION_FAILED,
            error_domain=fakelibvirt.VIR_FROM_QEMU)


class OperationsTestBase(base.LifecycleTestBase):
    """Computes on the plugin whose STOPPED events are followed.

    ``FAST`` False runs the scenario with ``fast_stopped_events = False``
    (upstream's behaviour) and a delay of :data:`UPSTREAM_DELAY`.
    """

    FAST = True

    def setUp(self):
        super().setUp()
        if not self.FAST:
            self.flags(fast_stopped_events=False,
                       stopped_event_delay=UPSTREAM_DELAY, group='lifecycle')
        self.delay = UPSTREAM_DELAY if not self.FAST else base.DELAY
        self.follow_stopped = self.useFixture(FollowStoppedEvents())
        self.useFixture(InstanceFiles())
        self.useFixture(StartAndSaveEvents())

    def start_followed_compute(self, hostname='compute1'):
        """Start a compute on the plugin and follow its STOPPED events."""
        self.start_lifecycle_compute(hostname)
        compute = self.lifecycle_computes[hostname]
        compute.fates = self.useFixture(StoppedFates(
            self.follow_stopped, compute.driver, compute.connection))
        return compute

    def boot(self, host=None):
        """Boot an m1.tiny server (512 MB) and wait for its events."""
        tiny, = [flavor['id'] for flavor in self.api.get_flavors()
                 if flavor['name'] == 'm1.tiny']
        server = self._create_server(networks='none', host=host,
                                     flavor_id=tiny)
        self.settle()
        return server

    def settle(self):
        """Wait until every compute has handled every event it got."""
        for hostname, compute in self.lifecycle_computes.items():
            compute.driver.event_path.wait_for_counts(
                lambda counts: counts['pending'] == 0, base.WAIT)
            stats = base.lifecycle_counts(compute.driver)
            self.assertEqual(0, stats['pending'],
                             '%s still has events pending: %s'
                             % (hostname, stats))

    def mark(self):
        """Where every compute's records and counters are now."""
        return {hostname: (compute.fates.mark(),
                           base.lifecycle_counts(compute.driver),
                           len(compute.events.items))
                for hostname, compute in self.lifecycle_computes.items()}

    def events_since(self, mark, hostname, server):
        """libvirt events of ``server`` the compute queued since ``mark``."""
        compute = self.lifecycle_computes[hostname]
        with compute.events._lock:
            items = compute.events.items[mark[hostname][2]:]
        return [name for uuid, name in items if uuid == server['id']]

    def host_of(self, server):
        return self.api.get_server(server['id'])['OS-EXT-SRV-ATTR:host']

    def assert_operation(self, server, mark, status, host, held,
                         running_on=None):
        """The operation ended well, and no STOPPED stood in its way.

        * the API shows ``status`` with no task, on ``host``;
        * the domain runs on ``running_on`` (default: ``host`` when the
          status is one of a running guest) and nowhere else;
        * nobody called the compute API's ``stop`` or ``force_stop``;
        * ``held``: {hostname: [(detail name, [driver operations])]}, the
          STOPPED events of the server each compute got since ``mark``,
          with operations that were in progress when each came in (see
          :meth:`assert_held`); each was held for the full delay;
        * each STOPPED was cancelled (a later event, or a re-check that
          found the domain up) or delivered (with ``fast_stopped_events``,
          only while the domain was not up), and every ledger balances
          with nothing pending or failed.
        """
        self.wait_for_status(server, status)
        self.settle()
        self.assertEqual(host, self.host_of(server))
        if running_on is None and status in ('ACTIVE', 'RESCUE',
                                             'VERIFY_RESIZE'):
            running_on = host
        self.assertEqual([], [(name, uuid) for name, uuid, api
                              in self.api_calls.calls],
                         'compute API stop/force_stop calls')
        for hostname, compute in self.lifecycle_computes.items():
            fates_mark, before, _ = mark[hostname]
            state = domain_state(compute.connection, server['id'])
            if hostname == running_on:
                self.assertEqual(base.RUNNING, state, hostname)
            else:
                self.assertNotIn(state, UP_STATES, hostname)
            got = compute.fates.held_since(fates_mark, server['id'])
            self.assert_held(held.get(hostname, []),
                             [(detail, ops) for _, detail, ops, _ in got],
                             hostname)
            for _, detail, operations, seconds in got:
                if operations:
                    self.assertEqual(self.delay, seconds, (detail, hostname))
            delivered = compute.fates.delivered_since(fates_mark)
            for _, detail, state in delivered:
                # Upstream delivers a STOPPED once its delay is over,
                # whatever the domain's state: a slow operation then gets
                # it while the guest runs again, and only Nova's task state
                # keeps the manager from stopping the guest.
                if self.FAST:
                    self.assertNotIn(state, UP_STATES,
                                     '%s delivered on %s for a domain in '
                                     'state %s' % (detail, hostname, state))
            stats = base.lifecycle_counts(compute.driver)
            self.assert_ledger_balanced(stats)
            self.assertEqual({}, stats['failed_by_error'], stats)
            cancelled = (self.stopped_cancelled(stats) -
                         self.stopped_cancelled(before))
            self.assertEqual(
                len(compute.fates.held_since(fates_mark)),
                len(delivered) + cancelled,
                'STOPPED events on %s neither cancelled nor delivered: %s'
                % (hostname, stats))

    def assert_held(self, expected, got, hostname):
        """The STOPPED events held are the expected ones.

        An expected event's operations must all have been in progress
        when it came in; more may have been: under eventlet an event is
        taken in on a green thread, after an inner operation that caused
        it (the suspend of a cold snapshot, say) may have returned.
        """
        self.assertEqual([detail for detail, _ in expected],
                         [detail for detail, _ in got],
                         'STOPPED events held on %s: %s' % (hostname, got))
        for (detail, operations), (_, in_progress) in zip(expected, got):
            if operations:
                self.assertLessEqual(set(operations), set(in_progress),
                                     (hostname, detail))
            else:
                self.assertEqual([], in_progress, (hostname, detail))
