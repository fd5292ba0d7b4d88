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

"""Test base for real libvirtd + QEMU: boots the tiny test guest.

Needs, on the machine running the tests:

* a libvirtd answering ``qemu:///system`` (``tools/libvirt-setup.sh``);
* the guest of ``tools/build-test-guest.sh``, current with that script, in
  ``$NOVA_LIFECYCLE_GUEST_DIR`` (default ``/var/cache/nova-lifecycle/guest``).

Without them every test is skipped with the reason, unless
``NOVA_LIFECYCLE_REQUIRE_LIBVIRT=1`` is set (CI): then every test fails with
it. With ``NOVA_LIFECYCLE_EVENT_LOG=<file>`` each test appends the libvirt
events it saw, with the host's actions and boot times, and the figures it
measured (:func:`note`), to that file.

libvirt's default event loop runs on a named native thread
(``lifecycle-test-libvirt-loop``), in both of Nova's concurrency modes; it
is stopped, and the test's domains destroyed, in cleanup. The callbacks
only record into a list under a native lock; the test polls that list with
bounded waits.

Every test holds the libvirtd lock (:class:`DaemonLock`) shared; a test
that kills libvirtd, loads the machine (many domains) or measures tight
timings holds it exclusively, so that no other test of the suite (another
stestr worker) uses the daemon meanwhile.
"""

import errno
import fcntl
import os
import signal
import string
import subprocess
import tempfile
import time
import uuid

import fixtures
from testtools import content

from nova_lifecycle import concurrency
from nova_lifecycle.tests import base
from nova_lifecycle.tests import fixtures as lc_fixtures
from nova_lifecycle.tests import testguest

try:
    import libvirt
except ImportError as exc:  # pragma: no cover - depends on the machine
    libvirt = None
    _LIBVIRT_IMPORT_ERROR = str(exc)

URI = os.environ.get('NOVA_LIFECYCLE_LIBVIRT_URI', 'qemu:///system')
GUEST_DIR = os.environ.get('NOVA_LIFECYCLE_GUEST_DIR', testguest.DEFAULT_DIR)
REQUIRE_ENV = 'NOVA_LIFECYCLE_REQUIRE_LIBVIRT'
EVENT_LOG_ENV = 'NOVA_LIFECYCLE_EVENT_LOG'

LOCK_ENV = 'NOVA_LIFECYCLE_LIBVIRTD_LOCK'
LIBVIRTD_LOCK = os.environ.get(
    LOCK_ENV, os.path.join(tempfile.gettempdir(),
                           'nova-lifecycle-libvirtd.lock'))

SETUP_SCRIPT = testguest.LIBVIRT_SETUP_SCRIPT
DOMAIN_TEMPLATE = os.path.join(testguest.TOOLS, 'guest-domain.xml.template')
# What tools/libvirt-setup.sh records about the daemons it started.
SETUP_STATE = '/var/run/libvirt/nova-lifecycle-started'
LIBVIRTD_CONF = '/etc/libvirt/libvirtd.conf'
# Where libvirtd keeps one log per QEMU domain, transient ones included.
QEMU_LOG_DIR = '/var/log/libvirt/qemu'

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
# Seconds a test may wait for the libvirtd lock: the longest other test.
LOCK_WAIT = 120
# Seconds tools/libvirt-setup.sh may take to start libvirtd again.
RESTART_WAIT = 60

# A domain that never runs a guest: started paused (VIR_DOMAIN_START_PAUSED)
# it costs one idle QEMU process, for tests that need many domains or only
# their events.
MINIMAL_DOMAIN = """<domain type='qemu'>
  <name>%(name)s</name>
  <uuid>%(uuid)s</uuid>
  <memory unit='MiB'>32</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <on_poweroff>destroy</on_poweroff>
  <devices><memballoon model='none'/></devices>
</domain>"""

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
    if not os.path.isfile(DOMAIN_TEMPLATE):
        return 'domain template %s missing' % DOMAIN_TEMPLATE
    return testguest.problem(GUEST_DIR)


def domain_xml(template, name, domain_uuid, cmdline, console,
               on_crash='destroy'):
    """The test guest's domain XML from the template, for one domain."""
    return template.substitute(
        name=name, uuid=domain_uuid,
        kernel=os.path.join(GUEST_DIR, 'vmlinuz'),
        initrd=os.path.join(GUEST_DIR, 'initrd.img'),
        cmdline=cmdline, console_log=console, on_crash=on_crash)


def load_template():
    with open(DOMAIN_TEMPLATE) as f:
        return string.Template(f.read())


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


def hypervisor_problem():
    """Why these tests cannot run on this machine, or None."""
    return _libvirt_problem() or _guest_problem()


def skip_or_fail(test, problem):
    """Skip ``test`` for ``problem``; fail it instead where CI asks to."""
    if os.environ.get(REQUIRE_ENV) == '1':
        test.fail('%s (%s=1 makes this a failure)' % (problem, REQUIRE_ENV))
    test.skipTest(problem)


def _lock_within(f, operation, deadline, what):
    while True:
        try:
            fcntl.flock(f, operation | fcntl.LOCK_NB)
            return
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
        if time.monotonic() >= deadline:
            raise AssertionError('%s not acquired within %ss'
                                 % (what, LOCK_WAIT))
        time.sleep(0.1)


class DaemonLock(fixtures.Fixture):
    """libvirtd for this test: shared, or exclusive (see the module doc).

    Two flock(2) files: the gate is held only while acquiring (and by an
    exclusive request for as long as it waits), so that shared holders
    that come and go between tests cannot starve an exclusive request.
    The wait is bounded by :data:`LOCK_WAIT`.
    """

    def __init__(self, exclusive=False, path=LIBVIRTD_LOCK):
        super().__init__()
        self.exclusive = exclusive
        self.path = path

    def _setUp(self):
        deadline = time.monotonic() + LOCK_WAIT
        gate = open(self.path + '.gate', 'a')
        self.addCleanup(gate.close)
        lock = open(self.path, 'a')
        self.addCleanup(lock.close)
        _lock_within(gate, fcntl.LOCK_EX, deadline, self.path + '.gate')
        try:
            _lock_within(lock, fcntl.LOCK_EX if self.exclusive
                         else fcntl.LOCK_SH, deadline, self.path)
        finally:
            fcntl.flock(gate, fcntl.LOCK_UN)
        self.addCleanup(fcntl.flock, lock, fcntl.LOCK_UN)


def _pid_alive(pid):
    """True while ``pid`` runs (a zombie counts as ended)."""
    try:
        with open('/proc/%d/stat' % pid) as f:
            return f.read().rsplit(')', 1)[1].split()[0] not in ('Z', 'X')
    except (FileNotFoundError, ProcessLookupError):
        return False


def libvirtd_pid():
    """pid of the libvirtd tools/libvirt-setup.sh started, or None."""
    try:
        with open(SETUP_STATE) as f:
            recorded = [line.split() for line in f]
    except FileNotFoundError:
        return None
    pids = [int(words[1]) for words in recorded
            if len(words) == 2 and words[0] == 'libvirtd']
    if not pids:
        return None
    pid = pids[-1]
    try:
        with open('/proc/%d/comm' % pid) as f:
            if f.read().strip() != 'libvirtd':
                return None
    except FileNotFoundError:
        return None
    return pid if _pid_alive(pid) else None


def open_connection(uri=URI, timeout=RESTART_WAIT):
    """A connection to libvirtd, waiting (bounded) while it restarts."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return libvirt.open(uri)
        except libvirt.libvirtError:
            if time.monotonic() >= deadline:
                raise
        time.sleep(0.2)


def kill_libvirtd(pid, timeout=WAIT):
    """SIGKILL libvirtd and wait until it is gone (QEMU survives it)."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        raise AssertionError(
            'libvirtd (pid %d) vanished before the SIGKILL: something '
            'outside this test suite restarted it (whatever restarts '
            'libvirtd should hold %s exclusively, see DaemonLock)'
            % (pid, LIBVIRTD_LOCK))
    deadline = time.monotonic() + timeout
    while _pid_alive(pid):
        if time.monotonic() >= deadline:
            raise AssertionError('libvirtd (pid %d) still alive %ss after '
                                 'SIGKILL' % (pid, timeout))
        time.sleep(0.05)


def start_libvirtd():
    """Start libvirtd with the project's tooling; its output."""
    result = subprocess.run([SETUP_SCRIPT], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            timeout=RESTART_WAIT)
    if result.returncode != 0:
        raise AssertionError('%s failed (%d):\n%s'
                             % (SETUP_SCRIPT, result.returncode,
                                result.stdout))
    return result.stdout


def remove_qemu_log(name):
    """Remove the QEMU log libvirtd kept for a test's transient domain."""
    try:
        os.unlink(os.path.join(QEMU_LOG_DIR, name + '.log'))
    except FileNotFoundError:
        pass


def daemon_keepalive(path=LIBVIRTD_CONF):
    """libvirtd's (keepalive_interval, keepalive_count) for its clients."""
    settings = {'keepalive_interval': 5, 'keepalive_count': 5}
    try:
        with open(path) as f:
            for line in f:
                key, sep, value = line.partition('=')
                if sep and key.strip() in settings:
                    settings[key.strip()] = int(value.split('#')[0])
    except FileNotFoundError:
        pass
    return settings['keepalive_interval'], settings['keepalive_count']


def proc_status(field):
    """An integer field of /proc/self/status (VmRSS in KiB, Threads)."""
    with open('/proc/self/status') as f:
        for line in f:
            name, _, value = line.partition(':')
            if name == field:
                return int(value.split()[0])
    raise KeyError(field)


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

    # The wait for the libvirtd lock comes on top of the test's own time.
    timeout = TEST_TIMEOUT + LOCK_WAIT

    def setUp(self):
        super().setUp()
        problem = hypervisor_problem()
        if problem:
            skip_or_fail(self, problem)
        self.useFixture(lc_fixtures.NoThreadLeftBehind())
        self.useFixture(DaemonLock())
        self._template = load_template()
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
        return domain_xml(self._template, name, str(uuid.uuid4()), cmdline,
                          console, on_crash)

    def boot(self, cmdline, on_crash='destroy'):
        """Creates a transient domain with these lc.* words; a Guest."""
        name = 'nlc-it-%s-%s' % (self._testMethodName[5:][:30],
                                 uuid.uuid4().hex[:8])
        console = os.path.join(self.tmp, name + '.console')
        xml = self.domain_xml(name, cmdline, console, on_crash)
        created_at = time.monotonic()
        self.addCleanup(remove_qemu_log, name)
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
        report_guests(self, self.guests)


def _append_event_log(text):
    path = os.environ.get(EVENT_LOG_ENV)
    if path:
        mode = ('eventlet' if not concurrency.threading_mode()
                else 'threading')
        with open(path, 'a') as f:
            f.write('[%s mode]\n%s\n' % (mode, text))


def note(test, name, text):
    """A figure the test measured: a detail, and a line in the event log."""
    test.addDetail(name, content.text_content(text))
    _append_event_log('== %s\n%s: %s\n' % (test.id(), name, text))


def report_guests(test, guests):
    """The timeline of each guest: a detail, and the event log file."""
    blocks = []
    for guest in guests:
        ready = ', '.join('%.2f' % t for t in guest.ready_times)
        blocks.append('== %s\ndomain %s, cmdline %r\nboot-to-ready (s '
                      'since create): %s\n%s\n'
                      % (test.id(), guest.name, guest.cmdline,
                         ready or '-', '\n'.join(guest.timeline())))
    if not blocks:
        return
    text = '\n'.join(blocks)
    test.addDetail('libvirt-events', content.text_content(text))
    _append_event_log(text)
