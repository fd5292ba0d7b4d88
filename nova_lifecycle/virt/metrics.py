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

"""The plugin's figures in Prometheus' text format, for node-exporter.

Off by default. With ``[lifecycle] metrics_textfile`` set, a background
thread (``lifecycle-metrics``) writes the file every
``metrics_interval`` seconds, atomically (a temporary file renamed over
it), in the textfile-collector convention: node-exporter's
``--collector.textfile.directory`` picks it up and Prometheus scrapes
node-exporter. nova-compute opens no port for it.

Every value is read at write time from the driver's public surface
(``event_path.status()``, ``event_handler.status()``,
``power_sync.status()``), so the file is a snapshot of one moment.
"""

from oslo_log import log as logging

LOG = logging.getLogger(__name__)

PREFIX = 'nova_lifecycle_'


def _single(kind, name, doc, value):
    """A family of one unlabelled sample."""
    family = kind(PREFIX + name, doc)
    family.add_metric([], value)
    return family


def _families(driver):
    from prometheus_client import core

    path = driver.event_path.status()
    loop = driver.event_handler.status()
    syncs = driver.power_sync.status()
    counts = path.counts

    yield _single(
        core.CounterMetricFamily, 'events_received',
        'Instance events received from libvirt.',
        counts['received'])

    ended = core.CounterMetricFamily(
        PREFIX + 'events_ended',
        'Instance events by how they ended: delivered to the compute '
        'manager, cancelled (with the reason) or failed (with the error).',
        labels=['outcome', 'reason'])
    ended.add_metric(['delivered', ''], counts['delivered'])
    for reason, number in sorted(counts['cancelled_by_reason'].items()):
        ended.add_metric(['cancelled', reason], number)
    for error, number in sorted(counts['failed_by_error'].items()):
        ended.add_metric(['failed', error], number)
    yield ended

    yield _single(
        core.GaugeMetricFamily, 'events_pending',
        'Instance events not ended yet.',
        counts['pending'])

    yield _single(
        core.GaugeMetricFamily, 'oldest_pending_event_age_seconds',
        'Age of the oldest event not ended yet (0 when none is pending); a '
        'held STOPPED counts, so up to stopped_event_delay is normal.',
        counts['oldest_pending_age'] or 0.0)

    yield _single(
        core.GaugeMetricFamily, 'held_stopped_events',
        'STOPPED events held, waiting for a later event or their deadline.',
        len(path.held))

    yield _single(
        core.GaugeMetricFamily, 'events_awaiting_retry',
        'Events whose delivery failed for a passing reason (message bus or '
        'database away), waiting for their next attempt.',
        len(path.retrying))

    retries = core.CounterMetricFamily(
        PREFIX + 'delivery_retries',
        'Deliveries tried again, by the error of the attempt before.',
        labels=['error'])
    for error, number in sorted(path.retries.items()):
        retries.add_metric([error], number)
    yield retries

    yield _single(
        core.GaugeMetricFamily, 'dispatch_queue_depth',
        'Events waiting for a dispatch worker.',
        path.dispatch_queue)

    latency = path.delivery_latency
    histogram = core.HistogramMetricFamily(
        PREFIX + 'delivery_latency_seconds',
        'Seconds from libvirt\'s callback to the start of the compute '
        'manager\'s handler (a STOPPED\'s includes its hold).')
    histogram.add_metric(
        [], [('+Inf' if bound == float('inf') else repr(bound), number)
             for bound, number in latency['buckets']],
        sum_value=latency['sum'])
    yield histogram

    stopped = core.CounterMetricFamily(
        PREFIX + 'stopped_events_delivered',
        'STOPPED events handed to Nova, by why libvirt says the domain '
        'stopped.', labels=['reason'])
    for reason, number in sorted(path.stopped_by_reason.items()):
        stopped.add_metric([reason], number)
    yield stopped

    yield _single(
        core.CounterMetricFamily, 'libvirt_loop_failures',
        'Iterations of libvirt\'s event loop that raised.',
        loop['failures'])

    yield _single(
        core.GaugeMetricFamily, 'libvirt_loop_running',
        '1 while libvirt\'s event loop thread runs.',
        1 if loop['running'] else 0)

    idle = loop['seconds since last turn']
    if idle is not None:
        yield _single(
            core.GaugeMetricFamily, 'libvirt_loop_seconds_since_last_turn',
            'Seconds since an iteration of libvirt\'s event loop returned '
            '(keepalives make it turn every few seconds while connected).',
            idle)

    yield _single(
        core.CounterMetricFamily, 'libvirt_connections_lost',
        'Connection-closed notices from libvirt (each followed by a '
        'reconnect and a resync).',
        loop['connections lost'])

    stalled = core.GaugeMetricFamily(
        PREFIX + 'stalled',
        '1 while a part of the event path has not moved for '
        'stall_timeout seconds.', labels=['part'])
    for part, is_stalled in sorted(driver.liveness.stalled().items()):
        stalled.add_metric([part], 1 if is_stalled else 0)
    yield stalled

    steps = core.CounterMetricFamily(
        PREFIX + 'power_sync_instances',
        'Instances visited by the periodic power-state sync, by what became '
        'of them.', labels=['outcome'])
    for outcome, number in sorted(syncs['instances'].items()):
        steps.add_metric([outcome], number)
    yield steps

    latest = syncs['last sync']
    if latest is not None:
        yield _single(
            core.GaugeMetricFamily, 'power_sync_seconds',
            'Seconds the latest periodic power-state sync took, from its '
            'bulk query to the end of its last instance.',
            latest['seconds'])

    bulk = syncs['last bulk query']
    if bulk is not None and bulk['seconds'] is not None:
        yield _single(
            core.GaugeMetricFamily, 'power_sync_bulk_query_seconds',
            'Seconds the last bulk power-state query of libvirt took.',
            bulk['seconds'])


class Collector:
    """A prometheus_client collector of one driver's figures."""

    def __init__(self, driver):
        self._driver = driver

    def collect(self):
        return list(_families(self._driver))


def registry_for(driver):
    from prometheus_client import registry
    reg = registry.CollectorRegistry(auto_describe=False)
    reg.register(Collector(driver))
    return reg


def write_textfile(driver, path):
    """Write the driver's figures to ``path`` atomically."""
    from prometheus_client import exposition
    exposition.write_to_textfile(path, registry_for(driver))


def run_textfile_writer(driver, conf, stopping):
    """The ``lifecycle-metrics`` job: write every interval, and at the stop.

    A failing write (a full disk, a missing directory) is logged once, as
    a WARNING, until a write succeeds again.
    """
    path = conf.metrics_textfile
    LOG.info('nova-lifecycle writes its metrics to %s every %ss.', path,
             conf.metrics_interval)
    failed = stopped = False
    while True:
        try:
            write_textfile(driver, path)
            failed = False
        except Exception as exc:
            if not failed:
                LOG.warning('Cannot write nova-lifecycle metrics to %s: %s',
                            path, exc)
            failed = True
        if stopped:
            return
        # Once more when stopped: the file keeps the figures at the stop.
        stopped = stopping.wait(conf.metrics_interval)
