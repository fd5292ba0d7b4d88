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
queue, the driver operations in progress and the plugin's threads.
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
    """The driver's event path as plain data."""
    stats = driver._lifecycle_stats()
    return {
        'events': {key: stats[key] for key in (
            'received', 'delivered', 'cancelled', 'failed', 'pending')},
        'cancelled by reason': stats['cancelled_by_reason'],
        'failed by error': stats['failed_by_error'],
        'held STOPPED events': {
            uuid: 'delivered in %.1fs unless superseded' % remaining
            for uuid, remaining in driver._pipeline.held_stops()},
        'dispatch queue': stats['dispatch_queue'],
        'driver operations': driver._operations.busy(),
        'power-offs waiting for STOPPED': driver._stop_waiters.waiting(),
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


def log_line(driver):
    """One INFO line with the counters (the periodic stats log)."""
    stats = driver._lifecycle_stats()
    LOG.info('nova-lifecycle: %(received)d events received, %(delivered)d '
             'delivered, %(cancelled)d cancelled, %(failed)d failed, '
             '%(pending)d pending; %(held)d STOPPED held, dispatch queue '
             '%(queue)d; cancelled by reason %(reasons)s',
             {'received': stats['received'],
              'delivered': stats['delivered'],
              'cancelled': stats['cancelled'],
              'failed': stats['failed'], 'pending': stats['pending'],
              'held': stats['held_stopped'],
              'queue': stats['dispatch_queue'],
              'reasons': stats['cancelled_by_reason']})
