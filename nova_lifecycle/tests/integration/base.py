"""Test base for real libvirtd + QEMU: boots the tiny test guest.

Needs, on the machine running the tests:

* a libvirtd answering ``qemu:///system`` (``tools/libvirt-setup.sh``);
* the guest of ``tools/build-test-guest.sh``, current with that script, in
  ``$NOVA_LIFECYCLE_GUEST_DIR`` (default ``/var/cache/nova-lifecycle/guest``).

Without them every test is skipped with the reason, unless
``NOVA_LIFECYCLE_REQUIRE_LIBVIRT=1`` is set (CI): then every test fails with
it. With ``NOVA_LIFECYCLE_EVENT_LOG=<file>`` each test appends the libvirt
events it saw, with the host's actions and boot times, to that file.

libvirt's default event loop runs on a named native thread
(``lifecycle-test-libvirt-loop``), in both of Nova's concurrency modes; it
is stopped, and the test's domains destroyed, in cleanup. The callbacks
only record into a list under a native lock; the test polls that list with
bounded waits.
"""

import hashlib
import os
import string
import time
import uuid

import fixtures
from testtools import content

from nova_lifecycle import concurrency
from nova_lifecycle.tests import base
from nova_lifecycle.tests import fixtures as lc_fixtures

try:
    import libvirt
except ImportError as exc:  # pragma: no cover - depends on the machine
    libvirt = None
    _LIBVIRT_IMPORT_ERROR = str(exc)

URI = os.environ.get('NOVA_LIFECYCLE_LIBVIRT_URI', 'qemu:///system')
GUEST_DIR = os.environ.get('NOVA_LIFECYCLE_GUEST_DIR',
                           '/var/cache/nova-lifecycle/guest')
REQUIRE_ENV = 'NOVA_LIFECYCLE_REQUIRE_LIBVIRT'
EVENT_LOG_ENV = 'NOVA_LIFECYCLE_EVENT_LOG'

_TOOLS = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                      os.pardir, os.pardir, os.pardir, 'tools')
BUILD_SCRIPT = os.path.normpath(os.path.join(_TOOLS, 'build-test-guest.sh'))
DOMAIN_TEMPLATE = os.path.normpath(
    os.path.join(_TOOLS, 'guest-domain.xml.template'))

# What the guest's /init prints on the serial console.
READY = 'nova-lifecycle-guest: ready'
PRESS_IGNORED = 'nova-lifecycle-guest: power button press %d ignored'
PRESS_HONOURED = 'nova-lifecycle-guest: power button press %d: powering off'

# A test that runs longer than this is hanging.
TEST_TIMEOUT = 150
# Seconds a boot to the ready marker may take under TCG (3 to 9 s seen on
# 2 cores, with two guests booting at once).
BOOT_WAIT = 60
# Seconds any other awaited event may take.
WAIT = 30

LOOP_THREAD = concurrency.THREAD_PREFIX + 'test-libvirt-loop'

# libvirt's event numbers -> names, e.g. (5, 1) -> 'STOPPED_DESTROYED'.
EVENT_NAMES = {}
DETAIL_NAMES = {}
if libvirt is not None:
    for _event in ('DEFINED', 'UNDEFINED', 'STARTED', 'SUSPENDED',
                   'RESUMED', 'STOPPED', 'SHUTDOWN', 'PMSUSPENDED',
                   'CRASHED'):
        _number = getattr(libvirt, 'VIR_DOMAIN_EVENT_' + _event, None)
        if _number is None:
            continue
        EVENT_NAMES[_number] = _event
        _prefix = 'VIR_DOMAIN_EVENT_%s_' % _event
        DETAIL_NAMES[_number] = {
            getattr(libvirt, attr): attr[len(_prefix):]
            for attr in dir(libvirt)
            if attr.startswith(_prefix) and not attr.endswith('_LAST')}

STATE_NAMES = {0: 'nostate', 1: 'running', 2: 'blocked', 3: 'paused',
               4: 'shutdown', 5: 'shutoff', 6: 'crashed', 7: 'pmsuspended'}


def event_name(event, detail):
    name = EVENT_NAMES.get(event, 'EVENT%s' % event)
    return '%s_%s' % (name, DETAIL_NAMES.get(event, {}).get(
        detail, 'DETAIL%s' % detail))


def _guest_problem():
    """Why the test guest cannot be used, or None."""
    for name in ('vmlinuz', 'initrd.img'):
        if not os.path.isfile(os.path.join(GUEST_DIR, name)):
            return ('test guest not built: %s missing (run '
                    'tools/build-test-guest.sh)'
                    % os.path.join(GUEST_DIR, name))
    if not os.path.isfile(DOMAIN_TEMPLATE):
        return 'domain template %s missing' % DOMAIN_TEMPLATE
    if os.path.isfile(BUILD_SCRIPT):
        with open(BUILD_SCRIPT, 'rb') as f:
            wanted = hashlib.sha256(f.read()).hexdigest()
        try:
            with open(os.path.join(GUEST_DIR, 'build-hash')) as f:
                built = f.read().strip()
        except OSError:
            built = None
        if built != wanted:
            return ('test guest in %s is out of date with '
                    'tools/build-test-guest.sh (run it again)' % GUEST_DIR)
    return None


def _quiet_error_handler(ctx, error):
    """libvirt-python prints every error to stderr by default."""


def _libvirt_problem():
    """Why qemu:///system cannot be used, or None."""
    if libvirt is None:
        return 'libvirt-python not importable: %s' % _LIBVIRT_IMPORT_ERROR
    libvirt.registerErrorHandler(_quiet_error_handler, None)
    try:
        conn = libvirt.open(URI)
    except libvirt.libvirtError as exc:
        return ('libvirtd not usable at %s (run tools/libvirt-setup.sh as '
                'root): %s' % (URI, exc))
    try:
        kind = conn.getType()
        if kind != 'QEMU':
            return '%s is a %s connection, not QEMU' % (URI, kind)
    finally:
        conn.close()
    return None


_default_impl_registered = False


class LibvirtEventLoop(fixtures.Fixture):
    """libvirt's default event loop on a named native thread.

    The implementation is registered once per process (libvirt allows no
    other way); the thread runs only for the fixture's lifetime. A 100 ms
    timer wakes the loop so that the thread sees the stop request.
    """

    def _setUp(self):
        global _default_impl_registered
        if not _default_impl_registered:
            libvirt.virEventRegisterDefaultImpl()
            _default_impl_registered = True
        native = concurrency.native_threading()
        self._stop = native.Event()
        self._timer = libvirt.virEventAddTimeout(
            100, lambda timer, opaque: None, None)
        self.thread = native.Thread(target=self._run, name=LOOP_THREAD,
                                    daemon=True)
        self.thread.start()
        self.addCleanup(self._halt)

    def _run(self):
        while not self._stop.is_set():
            libvirt.virEventRunDefaultImpl()

    def _halt(self):
        self._stop.set()
        self.thread.join(10)
        libvirt.virEventRemoveTimeout(self._timer)
        if self.thread.is_alive():
            raise AssertionError('%s did not stop' % LOOP_THREAD)


class EventRecorder:
    """What libvirt's callbacks saw, per domain name, in arrival order.

    Runs on the loop thread: only appends under a native lock. The test's
    own actions are put on the same timeline with :meth:`note`.
    """

    def __init__(self):
        self._lock = concurrency.native_threading().Lock()
        self._entries = []   # (monotonic time, domain name, what)

    def lifecycle(self, conn, dom, event, detail, opaque):
        self._add(dom.name(), event_name(event, detail))

    def reboot(self, conn, dom, opaque):
        self._add(dom.name(), 'REBOOT')

    def note(self, name, what):
        self._add(name, '(host) ' + what)

    def _add(self, name, what):
        with self._lock:
            self._entries.append((time.monotonic(), name, what))

    def entries(self, name):
        with self._lock:
            return [(t, what) for t, n, what in self._entries if n == name]


class Guest:
    """One transient test domain and what was seen of it."""

    def __init__(self, test, dom, name, cmdline, console, recorder,
                 created_at):
        self.test = test
        self.dom = dom
        self.name = name
        self.cmdline = cmdline
        self.console_path = console
        self.recorder = recorder
        self.created_at = created_at
        self.ready_times = []

    # What was seen.

    def events(self):
        """Names of libvirt's events for this domain, oldest first."""
        return [what for _, what in self.recorder.entries(self.name)
                if not what.startswith('(host) ')]

    def timeline(self):
        """Events and host actions, with seconds since the create call."""
        return ['%+7.2fs %s' % (t - self.created_at, what)
                for t, what in self.recorder.entries(self.name)]

    def console(self):
        try:
            with open(self.console_path, errors='replace') as f:
                return f.read()
        except FileNotFoundError:
            return ''

    def state(self):
        """libvirt's state name; 'gone' once a transient domain ended."""
        try:
            return STATE_NAMES.get(self.dom.state()[0], 'unknown')
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return 'gone'
            raise

    def is_off(self):
        return self.state() in ('shutoff', 'gone')

    # Waiting, always bounded.

    def wait_until(self, predicate, what, timeout=WAIT):
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() >= deadline:
                self.test.fail('%s: no %s within %ss\nevents:\n%s\n'
                               'console (end):\n%s'
                               % (self.name, what, timeout,
                                  '\n'.join(self.timeline()),
                                  self.console()[-1500:]))
            time.sleep(0.05)

    def wait_event(self, name, count=1, timeout=WAIT):
        self.wait_until(lambda: self.events().count(name) >= count,
                        'event %s (x%d)' % (name, count), timeout)

    def wait_console(self, text, count=1, timeout=WAIT):
        """Waits for text on the serial console, and notes it.

        The note's time is when the test saw it: the console has no
        timestamps.
        """
        self.wait_until(lambda: self.console().count(text) >= count,
                        'console line %r (x%d)' % (text, count), timeout)
        self.recorder.note(self.name, 'console: %s%s' % (
            text.replace('nova-lifecycle-guest: ', ''),
            ' (#%d)' % count if count > 1 else ''))

    def wait_ready(self, count=1, timeout=BOOT_WAIT):
        """Waits for the count-th ready marker; seconds since create."""
        self.wait_console(READY, count, timeout)
        seconds = time.monotonic() - self.created_at
        self.ready_times.append(seconds)
        return seconds

    def wait_off(self, timeout=WAIT):
        self.wait_until(self.is_off, 'power-off', timeout)

    def assert_state_for(self, expected, seconds):
        """The domain stays in this state for that long."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            state = self.state()
            if state != expected:
                self.test.fail('%s: %s instead of %s\nevents:\n%s'
                               % (self.name, state, expected,
                                  '\n'.join(self.timeline())))
            time.sleep(0.1)

    def assert_stays_running(self, seconds):
        self.assert_state_for('running', seconds)

    # Host actions, put on the timeline.

    def shutdown(self, label='shutdown()'):
        self.recorder.note(self.name, label)
        self.dom.shutdown()

    def destroy(self):
        self.recorder.note(self.name, 'destroy()')
        self.dom.destroy()


class IntegrationTestCase(base.TestCase):
    """Real libvirtd, real QEMU (TCG), the tiny guest."""

    timeout = TEST_TIMEOUT

    def setUp(self):
        super().setUp()
        problem = _libvirt_problem() or _guest_problem()
        if problem:
            if os.environ.get(REQUIRE_ENV) == '1':
                self.fail('%s (%s=1 makes this a failure)'
                          % (problem, REQUIRE_ENV))
            self.skipTest(problem)
        self.useFixture(lc_fixtures.NoThreadLeftBehind())
        with open(DOMAIN_TEMPLATE) as f:
            self._template = string.Template(f.read())
        self.tmp = self.useFixture(fixtures.TempDir()).path
        self.loop = self.useFixture(LibvirtEventLoop())
        self.conn = libvirt.open(URI)
        self.addCleanup(self.conn.close)
        self.recorder = EventRecorder()
        callbacks = [
            self.conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                self.recorder.lifecycle, None),
            self.conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_REBOOT,
                self.recorder.reboot, None),
        ]
        for callback in callbacks:
            self.addCleanup(self.conn.domainEventDeregisterAny, callback)
        self.guests = []
        self.addCleanup(self._report)

    def domain_xml(self, name, cmdline, console, on_crash='destroy'):
        return self._template.substitute(
            name=name, uuid=str(uuid.uuid4()),
            kernel=os.path.join(GUEST_DIR, 'vmlinuz'),
            initrd=os.path.join(GUEST_DIR, 'initrd.img'),
            cmdline=cmdline, console_log=console, on_crash=on_crash)

    def boot(self, cmdline, on_crash='destroy'):
        """Creates a transient domain with these lc.* words; a Guest."""
        name = 'nlc-it-%s-%s' % (self._testMethodName[5:][:30],
                                 uuid.uuid4().hex[:8])
        console = os.path.join(self.tmp, name + '.console')
        xml = self.domain_xml(name, cmdline, console, on_crash)
        created_at = time.monotonic()
        dom = self.conn.createXML(xml, 0)
        self.addCleanup(self._destroy_quietly, name)
        guest = Guest(self, dom, name, cmdline, console, self.recorder,
                      created_at)
        self.guests.append(guest)
        return guest

    def _destroy_quietly(self, name):
        try:
            self.conn.lookupByName(name).destroy()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() not in (libvirt.VIR_ERR_NO_DOMAIN,
                                            libvirt.VIR_ERR_OPERATION_INVALID):
                raise

    def _report(self):
        """The timeline of each guest: a detail, and the event log file."""
        blocks = []
        for guest in self.guests:
            ready = ', '.join('%.2f' % t for t in guest.ready_times)
            blocks.append('== %s\ndomain %s, cmdline %r\nboot-to-ready (s '
                          'since create): %s\n%s\n'
                          % (self.id(), guest.name, guest.cmdline,
                             ready or '-', '\n'.join(guest.timeline())))
        if not blocks:
            return
        text = '\n'.join(blocks)
        self.addDetail('libvirt-events', content.text_content(text))
        path = os.environ.get(EVENT_LOG_ENV)
        if path:
            mode = ('eventlet' if not concurrency.threading_mode()
                    else 'threading')
            with open(path, 'a') as f:
                f.write('[%s mode]\n%s\n' % (mode, text))
