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

"""What the plugin is doing, for operators.

The same status goes into nova-compute's Guru Meditation Report (oslo.reports,
``kill -USR2 <nova-compute pid>``) as a "nova-lifecycle" section, and, every
``[lifecycle] stats_log_interval`` seconds, into one INFO log line: where
every event ended (received = delivered + cancelled + failed + pending),
the STOPPED events held with their instance and seconds left, the dispatch
queue, the driver operations in progress, libvirt's event loop (running,
failures, last error) and the plugin's threads.
"""

import weakref

from oslo_log import log as logging
from oslo_reports import guru_meditation_report as gmr
from oslo_reports.models import with_default_views

from nova_lifecycle import concurrency

LOG = logging.getLogger(__name__)

SECTION = 'nova-lifecycle'

_current = None  # weakref to the driver the report describes
_registered = False


def status(driver):
    """The driver's event path and libvirt loop as plain data."""
    path = driver.event_path.status()
    counts = path.counts
    return {
        'events': {key: counts[key] for key in (
            'received', 'delivered', 'cancelled', 'failed', 'pending')},
        'cancelled by reason': counts['cancelled_by_reason'],
        'failed by error': counts['failed_by_error'],
        'held STOPPED events': {
            uuid: 'delivered in %.1fs unless superseded' % remaining
            for uuid, remaining in path.held},
        'events to deliver again after a failure': {
            uuid: 'next attempt in %.1fs unless superseded' % remaining
            for uuid, remaining in path.retrying},
        'new attempts, by the error before them': path.retries,
        'dispatch queue': path.dispatch_queue,
        'instances being dispatched': path.dispatching,
        'driver operations': path.operations,
        'power-offs waiting for STOPPED': path.stop_waiters,
        'STOPPED events delivered, by why the domain stopped':
            path.stopped_by_reason,
        'libvirt event loop': driver.event_handler.status(),
        'power-state sync': driver.power_sync.status(),
        'stalled': driver.liveness.stalled(),
        'threads': concurrency.plugin_threads(),
    }


def _section():
    driver = _current() if _current is not None else None
    data = status(driver) if driver is not None else {
        'status': 'no nova-lifecycle driver running'}
    return with_default_views.ModelWithDefaultViews(data)


def register(driver):
    """Make ``driver`` the one the Guru Meditation section describes."""
    global _current, _registered
    _current = weakref.ref(driver)
    if not _registered:
        gmr.TextGuruMeditation.register_section(SECTION, _section)
        _registered = True


def counts_text(counts):
    """'N events received, N delivered, N cancelled, N failed, N pending'."""
    return ('%(received)d events received, %(delivered)d delivered, '
            '%(cancelled)d cancelled, %(failed)d failed, %(pending)d '
            'pending' % counts)


def log_line(driver):
    """One INFO line with the counters (the periodic stats log)."""
    path = driver.event_path.status()
    LOG.info('nova-lifecycle: %(counts)s; %(held)d STOPPED held, dispatch '
             'queue %(queue)d; cancelled by reason %(reasons)s; libvirt '
             'loop failures %(loop_failures)d',
             {'counts': counts_text(path.counts),
              'held': len(path.held),
              'queue': path.dispatch_queue,
              'reasons': path.counts['cancelled_by_reason'],
              'loop_failures': driver.event_handler.status()['failures']})
