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

"""libvirt's lifecycle callback fed arbitrary arguments (hypothesis).

Each example is a script of lifecycle callbacks, made of any event type
and detail numbers (libvirt's and unknown ones, negative included), and of
domains whose UUID cannot be read, that Nova does not know, or whose
migration job cannot be read, with calls repeated and reordered as a
reconnecting or lagging libvirtd could send them. The script goes through
the entry libvirt calls (``virt.host.lifecycle_callback``), on
a native thread as libvirt's loop, into the driver on Nova's fake libvirt
and on to Nova's real ``ComputeManager.handle_events``.

A model of the plugin's documented rules says what must become of every
call; the test checks that nothing escapes into libvirt's loop, and that
the ledger, what the compute manager got (in order, per instance) and the
log lines agree with the model:

* DEFINED, UNDEFINED, PMSUSPENDED and CRASHED are not events for Nova
  (a stop that follows them comes as its own STOPPED): no count;
* SHUTDOWN notes who asked for the shutdown on the instance's next event;
* a domain whose UUID cannot be read: failed (``BadLifecycleEvent``) with
  a warning; an event type Nova has no transition for: cancelled
  (``no Nova transition``), warned once per type naming the instance;
* a STOPPED is held until a later event of its instance supersedes it
  (cancelled ``superseded by ...``) or its hold ends (here: at the end
  of the example, where a driver operation on the instance ends and
  brings it forward; re-checked against the domain, delivered);
* everything else is delivered; for a domain Nova does not know, Nova's
  handler says so in a debug line naming the instance.

Examples are derandomized and bounded, so every run checks the same ones.
"""

import collections
import itertools
import logging
import threading

import fixtures
import hypothesis
from hypothesis import strategies as st
from nova.compute import manager as compute_manager
from nova.compute import power_state
from nova.compute import vm_states
from nova import exception
from nova import objects
from nova.tests.fixtures import libvirt as fakelibvirt
from nova.virt import event as virtevent
from nova.virt import fake

from nova_lifecycle import concurrency
from nova_lifecycle.eventpath import libvirt_events
from nova_lifecycle.tests import fixtures as lc_fixtures
from nova_lifecycle.tests.unit import test_driver
from nova_lifecycle.tests.unit import test_faults
from nova_lifecycle.virt import driver as lc_driver
from nova_lifecycle.virt import host as lc_host

WAIT = 10
# Seconds a guest-initiated STOPPED is held: longer than any example.
GRACE = 15
# libvirt's own numbers, the types Nova acts on more often, and numbers
# libvirt never sent (a newer libvirt, garbage), C ints at the extremes.
ODD_NUMBERS = [-1, 9, 64, 2 ** 31 - 1, -2 ** 31]
EVENT_TYPES = st.sampled_from(
    [0, 1, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 7, 8] +
    ODD_NUMBERS)
DETAILS = st.sampled_from(
    [0, 0, 0, 0, 1, 1, 1, 2, 2, 3, 4, 5, 6, 7, 7, 8] + ODD_NUMBERS)
IDENTITIES = ('nova-0', 'nova-1', 'foreign')
DOMAINS = st.tuples(
    st.sampled_from(('nova-0', 'nova-0', 'nova-1', 'foreign')),
    st.sampled_from(('ok', 'ok', 'ok', 'ok', 'no-uuid', 'broken',
                     'job-completed', 'job-error')))

SILENT_TYPES = frozenset({0, 1, 7, 8})


class FuzzDomain:
    """A libvirt domain object that behaves as ``behaviour`` says."""

    def __init__(self, uuid, behaviour):
        self._uuid = uuid
        self._behaviour = behaviour

    def UUIDString(self):
        if self._behaviour == 'no-uuid':
            raise fakelibvirt.make_libvirtError(
                fakelibvirt.libvirtError, 'Domain not found',
                error_code=fakelibvirt.VIR_ERR_NO_DOMAIN,
                error_domain=fakelibvirt.VIR_FROM_QEMU)
        if self._behaviour == 'broken':
            raise RuntimeError('virDomain object is broken')
        return self._uuid

    def jobStats(self, flags=0):
        if self._behaviour == 'job-error':
            raise RuntimeError('job stats unavailable')
        if self._behaviour == 'job-completed':
            return {'type': fakelibvirt.VIR_DOMAIN_JOB_COMPLETED}
        return {'type': fakelibvirt.VIR_DOMAIN_JOB_FAILED}


@st.composite
def scripts(draw):
    """Callbacks ((identity, behaviour), event type, detail).

    Some are sent twice, some out of order.
    """
    calls = draw(st.lists(st.tuples(DOMAINS, EVENT_TYPES, DETAILS),
                          max_size=25))
    if calls:
        for _ in range(draw(st.integers(0, 3))):
            i = draw(st.integers(0, len(calls) - 1))
            calls.insert(draw(st.integers(i, len(calls))), calls[i])
        for _ in range(draw(st.integers(0, 3))):
            i = draw(st.integers(0, len(calls) - 1))
            j = draw(st.integers(0, len(calls) - 1))
            calls[i], calls[j] = calls[j], calls[i]
    return calls


def nova_transition(event_type, detail, behaviour):
    """Nova's transition for a libvirt event (upstream's mapping)."""
    if event_type == libvirt_events.DOMAIN_EVENT_STOPPED:
        return virtevent.EVENT_LIFECYCLE_STOPPED
    if event_type == libvirt_events.DOMAIN_EVENT_STARTED:
        return virtevent.EVENT_LIFECYCLE_STARTED
    if event_type == libvirt_events.DOMAIN_EVENT_RESUMED:
        return virtevent.EVENT_LIFECYCLE_RESUMED
    if event_type == libvirt_events.DOMAIN_EVENT_SUSPENDED:
        if detail == libvirt_events.DOMAIN_EVENT_SUSPENDED_POSTCOPY:
            return virtevent.EVENT_LIFECYCLE_POSTCOPY_STARTED
        if (detail == libvirt_events.DOMAIN_EVENT_SUSPENDED_MIGRATED and
                behaviour == 'job-completed'):
            return virtevent.EVENT_LIFECYCLE_MIGRATION_COMPLETED
        return virtevent.EVENT_LIFECYCLE_PAUSED
    return None


def transition_name(transition):
    return virtevent.LifecycleEvent(None, transition).get_name()


class Expected:
    """What the plugin must make of a script, from its documented rules."""

    def __init__(self, script, uuid_of):
        self.received = 0
        self.cancelled = collections.Counter()
        self.failed = collections.Counter()
        self.unreadable = 0
        self.unknown_types = set()
        # uuid -> [(transition, libvirt event, detail, shutdown detail,
        #           has error)], in delivery order.
        self.delivered = collections.defaultdict(list)
        self.held = {}
        notes = {}
        for (identity, behaviour), event_type, detail in script:
            if event_type in SILENT_TYPES:
                continue
            uuid = uuid_of[identity]
            if behaviour in ('no-uuid', 'broken'):
                if event_type != libvirt_events.DOMAIN_EVENT_SHUTDOWN:
                    self.received += 1
                    self.unreadable += 1
                    self.failed['BadLifecycleEvent'] += 1
                continue
            if event_type == libvirt_events.DOMAIN_EVENT_SHUTDOWN:
                notes[uuid] = detail
                continue
            self.received += 1
            transition = nova_transition(event_type, detail, behaviour)
            if transition is None:
                self.cancelled['no Nova transition'] += 1
                self.unknown_types.add(event_type)
                continue
            job_error = (
                event_type == libvirt_events.DOMAIN_EVENT_SUSPENDED and
                detail == libvirt_events.DOMAIN_EVENT_SUSPENDED_MIGRATED and
                behaviour == 'job-error')
            record = (transition, event_type, detail, notes.pop(uuid, None),
                      job_error)
            if uuid in self.held:
                del self.held[uuid]
                self.cancelled['superseded by %s'
                               % transition_name(transition)] += 1
            if transition == virtevent.EVENT_LIFECYCLE_STOPPED:
                self.held[uuid] = record
            else:
                self.delivered[uuid].append(record)

    def after_release(self):
        """What is delivered once the held STOPPED events are released.

        Their domains do not run (Nova's fake libvirt has none of them),
        so the re-check lets them through.
        """
        delivered = collections.defaultdict(list, {
            uuid: list(records) for uuid, records in self.delivered.items()})
        for uuid, record in self.held.items():
            delivered[uuid].append(record)
        return delivered


class RecordingHandler(logging.Handler):
    """Keeps the formatted messages of the loggers it is attached to."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


class ManagerListener:
    """Records each event, then hands it to Nova's real handler."""

    def __init__(self, manager):
        self._manager = manager
        self._lock = threading.Lock()
        self.by_uuid = collections.defaultdict(list)

    def __call__(self, event):
        with self._lock:
            self.by_uuid[event.uuid].append((
                event.transition, event.libvirt_event, event.libvirt_detail,
                event.shutdown_detail, event.error is not None))
        self._manager.handle_events(event)


class LifecycleCallbackFuzzTest(test_driver.DriverTestCase):

    REQUIRES_LOCKING = True

    def setUp(self):
        super().setUp()
        # Holds long enough that only a later event or the end of the
        # example ends them: the model need not guess timings.
        self.flags(stopped_event_delay=60, stopped_event_grace=GRACE,
                   dispatch_workers=4, group='lifecycle')
        self.driver = lc_driver.LibvirtLifecycleDriver(fake.FakeVirtAPI(),
                                                       False)
        self.compute = compute_manager.ComputeManager()
        self.compute.driver = self.driver
        self.listener = ManagerListener(self.compute)
        self.driver.register_event_listener(self.listener)
        self.instances = {}
        self.useFixture(fixtures.MockPatchObject(
            objects.Instance, 'get_by_uuid', side_effect=self._get_by_uuid))
        self.useFixture(fixtures.MockPatchObject(objects.Instance, 'save'))
        self.useFixture(fixtures.MockPatchObject(objects.Instance,
                                                 'refresh'))
        self.stop = self.useFixture(fixtures.MockPatchObject(
            self.compute.compute_api, 'stop')).mock
        self.logs = RecordingHandler()
        for name in ('nova.compute.manager', 'nova_lifecycle'):
            self.useFixture(fixtures.LogHandler(
                self.logs, name=name, level=logging.DEBUG,
                nuke_handlers=False))
        self.conn = self.start_events()
        self.ledger = lc_fixtures.PathCounts(self.driver.event_path)
        self.host = self.driver._host
        self.examples = itertools.count()
        self.addCleanup(self.assert_all_ended)

    def assert_all_ended(self):
        stats = self.ledger.snapshot()
        self.assertTrue(self.ledger.balanced(), stats)
        self.assertEqual(0, stats['pending'], stats)

    def _get_by_uuid(self, context, uuid, expected_attrs=None,
                     use_slave=False):
        try:
            return self.instances[uuid]
        except KeyError:
            raise exception.InstanceNotFound(instance_id=uuid)

    def new_uuids(self):
        """Fresh UUIDs per example, so no state carries over."""
        n = next(self.examples)
        uuid_of = {}
        for i, identity in enumerate(IDENTITIES):
            uuid = '%08x-%04x-0000-0000-000000000000' % (n, i)
            uuid_of[identity] = uuid
            if identity != 'foreign':
                self.instances[uuid] = objects.Instance(
                    id=i + 1, uuid=uuid, vm_state=vm_states.ACTIVE,
                    power_state=power_state.RUNNING, task_state=None,
                    host=self.compute.host, shutdown_terminate=False)
        return uuid_of

    def fire(self, script, uuid_of):
        """Run the callbacks on a native thread, as libvirt's loop does.

        :returns: whatever escaped the callback.
        """
        escaped = []
        conn = test_faults.raw(self.conn)

        def libvirt_loop():
            for (identity, behaviour), event_type, detail in script:
                dom = FuzzDomain(uuid_of[identity], behaviour)
                try:
                    lc_host.lifecycle_callback(
                        conn, dom, event_type, detail, self.host)
                except BaseException as exc:
                    escaped.append(exc)

        thread = concurrency.native_threading().Thread(
            target=libvirt_loop, name='fuzz-libvirt-loop')
        thread.start()
        thread.join(WAIT)
        self.assertFalse(thread.is_alive())
        return escaped

    def count(self, since, *texts):
        """Log messages since index ``since`` that contain all ``texts``."""
        return sum(all(text in message for text in texts)
                   for message in self.logs.messages[since:])

    # Cases every run checks, besides the generated ones.
    @hypothesis.example(script=[  # hard reboot
        (('nova-0', 'ok'), 6, 2), (('nova-0', 'ok'), 5, 1),
        (('nova-0', 'ok'), 4, 0), (('nova-0', 'ok'), 2, 0)])
    @hypothesis.example(script=[  # the guest powers off; libvirt repeats
        (('nova-0', 'ok'), 6, 1), (('nova-0', 'ok'), 5, 0),
        (('nova-0', 'ok'), 5, 0), (('nova-1', 'ok'), 5, 2)])
    @hypothesis.example(script=[  # STARTED overtaken by a late STOPPED
        (('nova-0', 'ok'), 2, 0), (('nova-0', 'ok'), 5, 1),
        (('nova-1', 'ok'), 5, 1), (('nova-1', 'ok'), 2, 0)])
    @hypothesis.example(script=[  # migrations: done, failed, unreadable
        (('nova-0', 'job-completed'), 3, 1), (('nova-1', 'ok'), 3, 1),
        (('nova-1', 'job-error'), 3, 1), (('nova-0', 'ok'), 3, 7)])
    @hypothesis.example(script=[  # domains without a readable UUID
        (('nova-0', 'no-uuid'), 5, 0), (('nova-0', 'no-uuid'), 6, 1),
        (('nova-1', 'broken'), 2, 0), (('nova-1', 'broken'), 0, 0)])
    @hypothesis.example(script=[  # a domain Nova does not know
        (('foreign', 'ok'), 2, 0), (('foreign', 'ok'), 5, 0),
        (('foreign', 'ok'), 3, 0)])
    @hypothesis.example(script=[  # numbers libvirt never sent
        (('nova-0', 'ok'), 9, 0), (('nova-0', 'ok'), 2, 64),
        (('nova-1', 'ok'), -2 ** 31, 2 ** 31 - 1), (('nova-1', 'ok'), 5, -1)])
    @hypothesis.settings(
        max_examples=150, deadline=None, derandomize=True, database=None,
        print_blob=True,
        suppress_health_check=[hypothesis.HealthCheck.too_slow])
    @hypothesis.given(script=scripts())
    def test_every_callback_is_accounted_for(self, script):
        uuid_of = self.new_uuids()
        expected = Expected(script, uuid_of)
        counts = test_faults.Counts(self.ledger)
        logged = len(self.logs.messages)

        self.assertEqual([], self.fire(script, uuid_of))

        # Everything came in; only the held STOPPED events still wait.
        counts.wait(lambda d: d['received'] == expected.received and
                    d['pending'] == len(expected.held))
        event_path = self.driver.event_path
        self.assertEqual(sorted(expected.held),
                         sorted(u for u, _ in event_path.status().held))
        # Release them: the end of a driver operation on an instance
        # brings its held STOPPED forward to the grace, none here.
        self.flags(stopped_event_grace=0, group='lifecycle')
        try:
            for uuid in expected.held:
                with event_path.track(uuid, 'reboot'):
                    pass
                self.assertLess(
                    dict(event_path.status().held).get(uuid, 0.0), 1.0, uuid)
            delta = counts.wait_ended(expected.received)
        finally:
            # The next example holds as before.
            self.flags(stopped_event_grace=GRACE, group='lifecycle')
        self.assertEqual([], event_path.status().held)

        delivered = expected.after_release()
        self.assertEqual(sum(map(len, delivered.values())),
                         delta['delivered'], delta)
        self.assertEqual(dict(expected.cancelled),
                         delta['cancelled_by_reason'])
        self.assertEqual(dict(expected.failed), delta['failed_by_error'])
        for identity in IDENTITIES:
            uuid = uuid_of[identity]
            self.assertEqual(delivered.get(uuid, []),
                             self.listener.by_uuid.get(uuid, []), identity)

        self.assertEqual(expected.unreadable, self.count(
            logged, 'Ignoring libvirt ', 'cannot read domain UUID'))
        foreign = uuid_of['foreign']
        self.assertEqual(len(delivered.get(foreign, [])), self.count(
            logged, 'arrived for non-existent instance', foreign))
        self.assertEqual(0, self.count(
            logged, 'arrived for non-existent instance', uuid_of['nova-0']))
        for event_type in expected.unknown_types:
            # Reported once per type, naming an instance, in this example
            # or an earlier one.
            name = libvirt_events.event_name(event_type, 0).split('_')[0]
            self.assertEqual(1, self.count(
                0, 'Ignoring libvirt event %s_' % name, 'for instance '),
                name)
        self.stop.assert_not_called()
