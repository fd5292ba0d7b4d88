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

"""The main job's scenarios, driven through Nova's REST API.

A scenario is a function ``run(env, m)``. ``env`` is the deployment seen
from outside (:class:`mainjob.deployment.Environment`): the
API, the hypervisor (``env.hv``, Nova's fake libvirt or a real libvirtd)
and the compute service; ``m`` (:class:`Measure`) collects what was
measured. A scenario raises :class:`ScenarioFailed` when Nova does not
reach the state it should; it knows nothing of which driver runs, except
for the bounds it sets on the plugin (``m.plugin_bound``), which the runner
checks on the plugin's run only.

Times are ``time.monotonic()`` seconds. The hypervisor change is the
moment the domain's state changed: with the fake, the time the lifecycle
event was emitted (the fake emits it as it changes the state); with a real
libvirtd, the first time a watcher polling the domain every 20 ms saw the
new state (see :mod:`mainjob.realvirt`).
"""

import dataclasses

# Seconds Nova may take to show a state before the scenario fails. Upstream
# holds a STOPPED event for 15 s, so a guest's own power-off takes that long.
WAIT = 30.0
# Seconds a boot may take (a real guest under TCG on a busy machine).
BOOT_WAIT = 90.0
# Seconds the API may take to show a stopped domain once the plugin is done
# with it (the stop scenarios' bound on the plugin).
STOP_BOUND = 2.0


class ScenarioFailed(Exception):
    """Nova did not do what the scenario expects; the message says why."""


@dataclasses.dataclass(frozen=True)
class Guest:
    """How the guest behaves (the words of the test guest's command line).

    ``acpi``: 'honour' (power off on the ACPI power button) or 'ignore'.
    ``poweroff_after``: seconds after it is ready that the guest powers
    itself off (None: never); a real guest needs it at boot, the fake one
    powers off when the scenario says so.
    """

    acpi: str = 'honour'
    poweroff_after: int | None = None


HONOURS_ACPI = Guest()
IGNORES_ACPI = Guest(acpi='ignore')


class Measure:
    """What a scenario measured, and what it expects of the compute.

    ``step`` records one change: the hypervisor change time, the time the
    API showed it, and the request time if an API request started it.
    ``expect_calls`` says how many stop()/force_stop() calls the compute
    manager should make for a server (the guest powering off by itself is
    recorded by Nova as a stop() call); every other call is spurious.
    """

    def __init__(self):
        self.steps = []          # (label, latency, total)
        self.expected = {}       # server id -> expected manager calls
        self.latency_bound = None
        self.total_bound = None
        self.notes = []
        self.error = None   # why the scenario failed, set by the runner

    def step(self, label, changed_at, shown_at, requested_at=None):
        latency = shown_at - changed_at
        total = None if requested_at is None else shown_at - requested_at
        self.steps.append((label, latency, total))
        return latency

    def expect_calls(self, server, count=0):
        self.expected[server['id']] = count

    def plugin_bound(self, latency=None, total=None):
        """Upper bounds the plugin must meet (seconds)."""
        self.latency_bound = latency
        self.total_bound = total

    def note(self, text):
        self.notes.append(text)

    @property
    def latency(self):
        values = [s[1] for s in self.steps]
        return max(values) if values else None

    @property
    def total(self):
        values = [s[2] for s in self.steps if s[2] is not None]
        return max(values) if values else None

    def bound_problems(self):
        """Why the measured figures break the plugin's bounds, if they do."""
        problems = []
        if (self.latency_bound is not None and self.latency is not None and
                self.latency > self.latency_bound):
            problems.append('change->API %.2f s is over the plugin\'s bound '
                            'of %.2f s' % (self.latency, self.latency_bound))
        if (self.total_bound is not None and self.total is not None and
                self.total > self.total_bound):
            problems.append('request->API %.2f s is over the plugin\'s bound '
                            'of %.2f s' % (self.total, self.total_bound))
        return problems


def _boot_active(env, m, guest=HONOURS_ACPI, label=None, ready=True):
    """Boot a server and wait until it is ACTIVE and its events handled.

    ``ready``: also wait until a real guest has booted (its ACPI handler
    runs and its power-off timer counts from then).
    """
    requested = env.now()
    server = env.boot(guest)
    shown = env.wait_status(server, 'ACTIVE', BOOT_WAIT)
    if label:
        started = env.hv.change_time(server, 'running', requested)
        m.step(label, started, shown, requested)
    if ready:
        env.hv.wait_ready(server)
    env.settle()
    return server


def boot(env, m):
    server = _boot_active(env, m, label='boot', ready=False)
    m.expect_calls(server, 0)


def guest_powers_off(env, m):
    server = _boot_active(env, m, Guest(poweroff_after=5))
    m.expect_calls(server, 1)
    changed = env.hv.guest_power_off(server)
    shown = env.wait_status(server, 'SHUTOFF', WAIT)
    m.step('power-off', changed, shown)
    # The guest stopped by itself; the plugin hands that on after the
    # grace, upstream after stopped_event_delay (15 s). The bound is half
    # way, so that a loaded machine does not fail the plugin.
    m.plugin_bound(latency=(env.settings['stopped_event_grace'] +
                            env.settings['stopped_event_delay']) / 2)


def _reboot(env, m, kind):
    # A soft reboot needs the guest to honour the ACPI request.
    server = _boot_active(env, m, ready=kind == 'SOFT')
    m.expect_calls(server, 0)
    requested = env.act(server, {'reboot': {'type': kind}})
    shown = env.wait_status(server, 'ACTIVE', WAIT)
    started = env.hv.change_time(server, 'running', requested)
    m.step('reboot', started, shown, requested)
    env.hv.assert_running(server)


def hard_reboot(env, m):
    _reboot(env, m, 'HARD')


def soft_reboot(env, m):
    _reboot(env, m, 'SOFT')


def _stop(env, m, guest):
    server = _boot_active(env, m, guest, ready=guest.acpi == 'honour')
    m.expect_calls(server, 0)
    requested = env.act(server, {'os-stop': None})
    shown = env.wait_status(server, 'SHUTOFF', WAIT)
    stopped = env.hv.change_time(server, 'shutoff', requested)
    m.step('stop', stopped, shown, requested)
    return server


def stop_acpi_honoured(env, m):
    _stop(env, m, HONOURS_ACPI)
    # The plugin's clean shutdown returns on the STOPPED event; upstream
    # looks once a second. The bound leaves room for a loaded machine.
    m.plugin_bound(latency=STOP_BOUND)


def stop_acpi_ignored(env, m):
    _stop(env, m, IGNORES_ACPI)
    timeout = env.settings['shutdown_timeout']
    m.note('shutdown_timeout %s s, then destroyed' % timeout)
    m.plugin_bound(latency=STOP_BOUND, total=timeout + 2 * STOP_BOUND)


def pause_resume(env, m):
    server = _boot_active(env, m, ready=False)
    m.expect_calls(server, 0)
    requested = env.act(server, {'pause': None})
    shown = env.wait_status(server, 'PAUSED', WAIT)
    m.step('pause', env.hv.change_time(server, 'paused', requested), shown,
           requested)
    env.settle()
    requested = env.act(server, {'unpause': None})
    shown = env.wait_status(server, 'ACTIVE', WAIT)
    m.step('resume', env.hv.change_time(server, 'running', requested),
           shown, requested)


def libvirtd_restart(env, m):
    # A real guest's power-off must come while libvirtd is down: libvirtd
    # is stopped (2 s at most) as soon as the guest is ready, and the guest
    # powers off 5 s after that.
    server = _boot_active(env, m, Guest(poweroff_after=5))
    m.expect_calls(server, 1)
    changed = env.hv.restart_libvirtd_while_guest_powers_off(server)
    try:
        try:
            shown = env.wait_status(server, 'SHUTOFF', env.hv.restart_wait)
        except ScenarioFailed as exc:
            raise ScenarioFailed(
                '%s (the events of the outage are lost: only a power-state '
                'sync finds the change, at the latest the periodic one, '
                'every sync_power_state_interval)' % exc)
        m.step('power-off during restart', changed, shown)
        m.plugin_bound(latency=env.hv.restart_wait / 2)
    finally:
        # The lost connection disabled the compute service; later
        # scenarios need it back.
        env.reconnect()


def graceful_shutdown(env, m):
    server = _boot_active(env, m, IGNORES_ACPI, ready=False)
    m.expect_calls(server, 0)
    entered = env.watch_power_off()
    requested = env.act(server, {'os-stop': None})
    if not entered.wait(WAIT):
        raise ScenarioFailed('the driver\'s power_off did not start')
    stopping = env.stop_compute_gracefully()
    shown = env.wait_status(server, 'SHUTOFF', WAIT)
    stopped = env.hv.change_time(server, 'shutoff', requested)
    m.step('stop during graceful shutdown', stopped, shown, requested)
    problems = stopping.finish(WAIT * 2)
    if problems:
        raise ScenarioFailed('; '.join(problems))
    m.plugin_bound(total=env.settings['shutdown_timeout'] + 2 * STOP_BOUND)


# Seconds the API may take to agree with libvirt again after an outage of
# the compute, RabbitMQ or MariaDB (nova-compute's periodic tasks start up
# to periodic_fuzzy_delay, 60 s, after it).
OUTAGE_WAIT = 120.0
# The compute's power-state sync interval in the MariaDB scenario (600 s
# by default).
SYNC_INTERVAL = 5


def _poweroff_wait(env, server):
    """Seconds to wait for a guest that powers off by itself."""
    return env.hv.guest(server).poweroff_after + WAIT


def _outage_during_power_off(env, m, server, service, then=None):
    """``service`` down while the (ready) guest powers itself off.

    The service is stopped at once, the guest's power-off must come after
    that; ``then(changed)`` runs before the service is started again.
    Returns the power-off time.
    """
    began = env.now()
    env.stop_service(service)
    down = env.now()
    try:
        changed = env.hv.wait_state(server, 'shutoff', began,
                                    _poweroff_wait(env, server))
        if changed < down:
            raise ScenarioFailed('the guest powered off before %s was '
                                 'stopped' % service)
        if then is not None:
            then(changed)
    finally:
        restarted = env.now()
        env.start_service(service)
        m.note('%s down %.1f s (stop %.1f s, start %.1f s)'
               % (service, env.now() - down, down - began,
                  env.now() - restarted))
    return changed


def compute_sigterm(env, m):
    """SIGTERM to nova-compute during an event burst.

    Four guests change state at once (a stop, a pause, a hard reboot, one
    destroyed behind Nova's back) and nova-compute gets SIGTERM at once;
    once it exited it is started again. Every server must then show in the
    API what libvirt has, with no task in progress.
    """
    stopped = _boot_active(env, m)
    paused = _boot_active(env, m, ready=False)
    rebooted = _boot_active(env, m, ready=False)
    destroyed = _boot_active(env, m, ready=False)
    servers = [(stopped, 'stop'), (paused, 'pause'),
               (rebooted, 'hard reboot'), (destroyed, 'destroyed')]
    for server, label in servers:
        m.expect_calls(server, 1 if label == 'destroyed' else 0)
    burst = env.act(stopped, {'os-stop': None})
    env.act(paused, {'pause': None})
    env.act(rebooted, {'reboot': {'type': 'HARD'}})
    env.hv.destroy(destroyed)
    stopping = env.stop_compute_gracefully()
    problems = stopping.finish(OUTAGE_WAIT)
    m.note('nova-compute exited %.1f s after SIGTERM' % stopping.seconds)
    restarted = env.now()
    # Started again in any case: the later scenarios need it.
    env.start_service('nova-compute')
    if problems:
        raise ScenarioFailed('; '.join(problems))
    m.note('started again and up in the API in %.1f s'
           % (env.now() - restarted))
    shown = env.wait_consistent([s for s, _ in servers], OUTAGE_WAIT)
    labels = {server['id']: label for server, label in servers}
    m.note('at the first look after the start: %s' % (
        '; '.join('%s: %s' % (labels[uuid], why) for uuid, why
                  in sorted(env.first_mismatches.items())) or 'all agree'))
    for server, label in servers:
        changed = env.hv.last_change(server, burst) or burst
        m.step(label, changed, shown, burst)
    m.note('states match %.1f s after the compute\'s start'
           % (shown - restarted))


def rabbitmq_restart(env, m):
    """RabbitMQ stopped and started while a guest powers itself off."""
    server = _boot_active(env, m, Guest(poweroff_after=10))
    m.expect_calls(server, 1)
    changed = _outage_during_power_off(env, m, server, 'rabbitmq')
    shown = env.wait_status(server, 'SHUTOFF', OUTAGE_WAIT)
    m.step('power-off while RabbitMQ restarts', changed, shown)
    env.wait_services_up()
    env.accept_event_failures()


def mariadb_restart_sync(env, m):
    """MariaDB restarted during a periodic power-state sync.

    nova-compute runs with sync_power_state_interval = 5 s; MariaDB is
    stopped once a guest is ready, the guest powers itself off, MariaDB
    stays down for one more interval (a sync runs while it is down), then
    starts. Afterwards the API must agree with libvirt on both servers.
    """
    if env.settings['sync_power_state_interval'] != SYNC_INTERVAL:
        env.restart_compute(sync_power_state_interval=SYNC_INTERVAL)
    running = _boot_active(env, m, ready=False)
    server = _boot_active(env, m, Guest(poweroff_after=8))
    m.expect_calls(running, 0)
    m.expect_calls(server, 1)
    mark = env.compute_log_mark()
    changed = _outage_during_power_off(
        env, m, server, 'mariadb',
        then=lambda changed: env.sleep_until(changed + SYNC_INTERVAL + 1))
    shown = env.wait_status(server, 'SHUTOFF', OUTAGE_WAIT)
    m.step('power-off while MariaDB restarts', changed, shown)
    env.wait_consistent([running, server], OUTAGE_WAIT)
    failed = env.failed_syncs_since(mark)
    m.note('power-state syncs that failed on the outage: %d' % failed)
    env.wait_services_up()
    env.accept_event_failures()


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    title: str
    run: object
    # Stops the compute service: runs last, after the others settled.
    stops_compute: bool = False
    # Needs the deployment of tools/services.sh (real processes).
    services_only: bool = False


SCENARIOS = (
    Scenario('boot', 'boot', boot),
    Scenario('guest-poweroff', 'guest powers off by itself',
             guest_powers_off),
    Scenario('hard-reboot', 'hard reboot', hard_reboot),
    Scenario('soft-reboot', 'soft reboot', soft_reboot),
    Scenario('stop-acpi-honoured', 'stop, guest honours ACPI',
             stop_acpi_honoured),
    Scenario('stop-acpi-ignored', 'stop, guest ignores ACPI',
             stop_acpi_ignored),
    Scenario('pause-resume', 'pause / resume', pause_resume),
    Scenario('libvirtd-restart', 'libvirtd restart, guest powers off',
             libvirtd_restart),
    Scenario('compute-sigterm', 'nova-compute SIGTERM in an event burst',
             compute_sigterm, services_only=True),
    Scenario('rabbitmq-restart', 'RabbitMQ restart, guest powers off',
             rabbitmq_restart, services_only=True),
    Scenario('mariadb-restart', 'MariaDB restart during power sync',
             mariadb_restart_sync, services_only=True),
    Scenario('graceful-shutdown', 'graceful compute stop during a stop',
             graceful_shutdown, stops_compute=True),
)

NAMES = tuple(s.name for s in SCENARIOS)


def select(names=None, services=False):
    """The scenarios named (all by default), in the catalogue's order.

    ``services``: the deployment of tools/services.sh, which alone runs
    the services-only scenarios.
    """
    available = [s for s in SCENARIOS if services or not s.services_only]
    if not names:
        return available
    unknown = sorted(set(names) - set(NAMES))
    if unknown:
        raise ValueError('unknown scenario(s): %s (known: %s)'
                         % (', '.join(unknown), ', '.join(NAMES)))
    elsewhere = sorted(set(names) - {s.name for s in available})
    if elsewhere:
        raise ValueError('%s: only with --deployment services'
                         % ', '.join(elsewhere))
    return [s for s in available if s.name in names]
