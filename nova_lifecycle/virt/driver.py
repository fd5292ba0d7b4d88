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

"""LibvirtLifecycleDriver: Nova's libvirt driver with the plugin's events.

Everything but the event path is upstream's ``LibvirtDriver``. Events
reach the compute manager's listener through an
:class:`~nova_lifecycle.eventpath.path.EventPath`, so libvirt's loop
thread never runs the manager's handler, events of one instance arrive in
order, and a STOPPED event is held so that a reboot's following event can
cancel it.
"""

import threading

from nova.virt import event as virtevent
from nova.virt.libvirt import driver as libvirt_driver
from nova.virt.libvirt import event as libvirtevent
from oslo_log import log as logging

from nova_lifecycle.common import background
from nova_lifecycle.compute import errors
from nova_lifecycle.compute import hooks
from nova_lifecycle import concurrency
from nova_lifecycle import conf
from nova_lifecycle.eventpath import libvirt_events
from nova_lifecycle.eventpath import path
from nova_lifecycle.virt import host as lifecycle_host
from nova_lifecycle.virt import liveness
from nova_lifecycle.virt import metrics
from nova_lifecycle.virt import shutdown
from nova_lifecycle.virt import snapshot
from nova_lifecycle.virt import status_report
from nova_lifecycle.virt import tracked_methods

LOG = logging.getLogger(__name__)
CONF = conf.CONF

# A bulk power-state snapshot older than this is not used by the sync; the
# sync takes one at its start, so this only bounds a sync that lags behind.
SNAPSHOT_MAX_AGE = 60.0
# Waits between attempts to reconnect to libvirt: doubling up to the cap.
RECONNECT_FIRST_WAIT = 1.0
RECONNECT_MAX_WAIT = 30.0
# Why an unexplained STOPPED is not delivered while nova-compute stops.
REASON_LEFT_TO_NEXT_START = ("nova-compute is stopping: left to the next "
                             "start's sync")
# Seconds between two looks at the event path's liveness.
LIVENESS_CHECK_INTERVAL = 5.0


@tracked_methods.tracking_operations
class LibvirtLifecycleDriver(libvirt_driver.LibvirtDriver):
    """The libvirt driver whose lifecycle events go through the plugin.

    Beyond upstream's interface it has four attributes: ``event_path`` (the
    :class:`~nova_lifecycle.eventpath.path.EventPath`), ``event_handler``
    (the :class:`~nova_lifecycle.virt.host.LifecycleEventHandler` in its
    Host, with libvirt's loop), ``power_sync`` (the
    :class:`~nova_lifecycle.compute.hooks.ManagerHooks` on the listening
    compute manager) and ``liveness`` (the
    :class:`~nova_lifecycle.virt.liveness.LivenessWatch`), whose public
    methods are what the Guru Meditation
    section, the metrics, the main job, benchmarks and tests read. Driver
    calls that stop or restart domains register their instance with the
    event path while they run (see :mod:`tracked_methods`).
    """

    def __init__(self, virtapi, read_only=False):
        super().__init__(virtapi, read_only)
        lifecycle_host.check_concurrency_mode()
        self.event_path = path.EventPath(
            CONF.lifecycle, self._deliver_event, self._live_domain_state,
            green=not concurrency.threading_mode(),
            retryable=errors.may_pass)
        # Upstream built its Host through its own name; keep it and give it
        # the plugin's event handling (see virt/host.py).
        self.event_handler = lifecycle_host.adopt(self._host,
                                                  self.event_path)
        self._power_states = None
        self._unhooked_sync_warned = False
        self.power_sync = hooks.ManagerHooks(self._recent_power_states)
        self._connection_lost = False
        self._reconnector = background.SingleRunner(
            self._reconnect_libvirt, 'lifecycle-reconnect')
        self._resyncer = background.SingleRunner(
            lambda stopping: self.power_sync.resync(), 'lifecycle-resync')
        self._stats_logger = background.SingleRunner(
            self._log_stats, 'lifecycle-stats')
        self.liveness = liveness.LivenessWatch(
            self.event_handler, self.event_path, self._resyncer.trigger)
        self._liveness_runner = background.SingleRunner(
            lambda stopping: liveness.run(
                self.liveness, CONF.lifecycle, stopping,
                LIVENESS_CHECK_INTERVAL), 'lifecycle-liveness')
        self._metrics_writer = background.SingleRunner(
            lambda stopping: metrics.run_textfile_writer(
                self, CONF.lifecycle, stopping), 'lifecycle-metrics')
        self._cleanup_lock = threading.Lock()
        self._cleaned_up = False

    # ComputeDriver event emitters

    def register_event_listener(self, callback):
        """Register the compute manager's handler (None unregisters).

        The handler's manager also gets the plugin's power-state sync; see
        :mod:`nova_lifecycle.compute.hooks`.
        """
        super().register_event_listener(callback)
        if callback is None:
            self.power_sync.detach()
        elif not self.power_sync.attach(callback):
            LOG.info('Event listener %r is not a compute manager method; '
                     'the power-state sync is not hooked.', callback)

    def emit_event(self, event):
        """Deliver an event to the listener now, on the calling thread.

        Kept for callers of the ComputeDriver interface; the plugin's own
        events go through ``event_path``.
        """
        if not isinstance(event, virtevent.Event):
            raise ValueError('Event must be an instance of '
                             'nova.virt.event.Event, not %r' % (event,))
        try:
            if not self._deliver_event(event):
                LOG.debug('No listener for event %s; discarded.', event)
        except Exception as exc:
            LOG.error('Exception dispatching event %(event)s: %(ex)s',
                      {'event': event, 'ex': exc})

    def _deliver_event(self, event):
        """Give one event to its handler; False when nobody listens.

        libvirt device events stay in the driver, as upstream; an
        exception from the listener propagates so it is counted as failed.
        """
        if isinstance(event, libvirtevent.LibvirtEvent):
            super().emit_event(event)
            return True
        callback = self._compute_event_callback
        if callback is None:
            return False
        if self._left_to_next_start(event):
            return REASON_LEFT_TO_NEXT_START
        callback(event)
        return True

    def _left_to_next_start(self, event):
        """An unexplained STOPPED while nova-compute stops is not handed on.

        Nova would answer it with the compute API's stop(), whose RPC goes
        to the 'compute' server that stopped first: the instance would sit
        in powering-off until the service starts again. The sync at the
        next start sees the domain off and stops it then. A STOPPED that a
        driver operation explains (one running on compute-alt) still goes.
        """
        if (event.transition != virtevent.EVENT_LIFECYCLE_STOPPED or
                not self.power_sync.shutdown_in_progress() or
                self.event_path.operation_explains(event.uuid)):
            return False
        LOG.info('STOPPED event for instance %s left to the power-state '
                 'sync at the next start: nova-compute is stopping, and the '
                 'stop Nova would ask for could not reach it now.',
                 event.uuid)
        return True

    def _live_domain_state(self, uuid):
        """libvirt's state number for the domain, None if there is none."""
        libvirt = libvirt_events.libvirt_module()
        conn = self._host.get_connection()
        try:
            return conn.lookupByUUIDString(uuid).info()[0]
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise

    # Clean guest shutdown

    def _clean_shutdown(self, instance, timeout, retry_interval):
        """ACPI shutdown with retries; ends on the domain's STOPPED event.

        Same contract as upstream (True when the guest shut down within
        ``timeout`` seconds); see :mod:`nova_lifecycle.virt.shutdown`.
        """
        return shutdown.clean_shutdown(self._host, self.event_path,
                                       instance, timeout, retry_interval)

    # Power-state sync

    def get_num_instances(self):
        """Number of domains, from one bulk query.

        The power-state sync calls this first and then uses the same
        snapshot for every instance (:mod:`nova_lifecycle.virt.snapshot`).
        """
        if self.power_sync.manager is None:
            self._warn_unhooked_sync()
        taken = snapshot.take(self._host.get_connection())
        self._power_states = taken
        return len(taken)

    def _warn_unhooked_sync(self):
        """Once: Nova syncs without a listener, so without the plugin's step.

        With ``[workarounds] handle_virt_lifecycle_events = False`` the
        compute manager never registers a listener, so the plugin cannot
        reach it (see :mod:`nova_lifecycle.compute.hooks`).
        """
        if self._unhooked_sync_warned or \
                CONF.workarounds.handle_virt_lifecycle_events:
            return
        self._unhooked_sync_warned = True
        LOG.warning('[workarounds] handle_virt_lifecycle_events is False: '
                    'Nova registers no event listener, so nova-lifecycle '
                    'delivers no lifecycle event and the power-state sync '
                    'is Nova\'s own (one libvirt call per instance); power '
                    'state changes reach Nova only through that periodic '
                    'sync. Clean shutdowns still end on the domain\'s '
                    'STOPPED event.')

    def _recent_power_states(self):
        """The last bulk snapshot, or None if there is no recent one."""
        taken = self._power_states
        if taken is not None and taken.age() <= SNAPSHOT_MAX_AGE:
            return taken
        return None

    # libvirt connection

    def _handle_conn_event(self, enabled, reason):
        """After a lost connection: reconnect at once, then resync.

        Events sent while the connection was down are gone, so every
        instance of the host is synced as soon as it is back instead of at
        the next periodic sync (up to ``sync_power_state_interval``).
        """
        super()._handle_conn_event(enabled, reason)
        if not enabled:
            self._connection_lost = True
            self._reconnector.trigger()
        elif self._connection_lost:
            self._connection_lost = False
            self._resyncer.trigger()

    def _reconnect_libvirt(self, stopping):
        wait = RECONNECT_FIRST_WAIT
        while not stopping.is_set():
            try:
                self._host.get_connection()
                LOG.info('Reconnected to libvirt.')
                return
            except Exception as exc:
                LOG.warning('Reconnecting to libvirt failed, next try in '
                            '%.0fs: %s', wait, exc)
            stopping.wait(wait)
            wait = min(wait * 2, RECONNECT_MAX_WAIT)

    # Life of the service

    def init_host(self, host):
        self.event_path.start()
        status_report.register(self)
        if CONF.lifecycle.stats_log_interval:
            self._stats_logger.trigger()
        if CONF.lifecycle.metrics_textfile:
            self._metrics_writer.trigger()
        super().init_host(host)
        # Upstream's init_host started libvirt's loop (Host._init_events),
        # unless a test harness keeps event threads out: nothing to watch.
        if self.event_handler.status()['running']:
            self._liveness_runner.trigger()

    def _log_stats(self, stopping):
        while not stopping.wait(CONF.lifecycle.stats_log_interval):
            status_report.log_line(self)

    def cleanup_host(self, host):
        """Wind down every thread of the plugin; safe to call again.

        Nova may call this from more than one thread at once (each
        service stop runs the manager's graceful shutdown on its own
        thread), so calls are serialised, and only the first one acts.
        """
        with self._cleanup_lock:
            if self._cleaned_up:
                # A service stopped twice (Nova's test fixtures do) calls
                # this again: the first call did the work and logged.
                LOG.debug('nova-lifecycle is already stopped.')
                return
            self._cleanup_host(host)
            self._cleaned_up = True

    def _cleanup_host(self, host):
        # Stop libvirt's loop first so nothing new arrives while the
        # pipeline winds down.
        self._reconnector.stop()
        self._resyncer.stop()
        self._stats_logger.stop()
        self._liveness_runner.stop()
        super().cleanup_host(host)
        self.event_handler.stop()
        self.event_path.stop()
        # Last: its final write shows where every event ended.
        self._metrics_writer.stop()
        self._log_drained()

    def _log_drained(self):
        """One line at the end of cleanup_host: where every event ended.

        Also names any of this driver's threads still running; either
        that or an event still pending makes it a warning.
        """
        counts = self.event_path.status().counts
        left = (self.event_handler.threads_alive() +
                self.event_path.threads_alive())
        left += [runner.name for runner in (
            self._reconnector, self._resyncer, self._stats_logger,
            self._metrics_writer, self._liveness_runner)
            if runner.is_running()]
        LOG.log(logging.WARNING if counts['pending'] or left else logging.INFO,
                'nova-lifecycle stopped: %(counts)s; %(threads)s',
                {'counts': status_report.counts_text(counts),
                 'threads': ('threads still running: %s' % ', '.join(left)
                             if left else 'no thread left')})
