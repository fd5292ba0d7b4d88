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

"""The Prometheus textfile, read back with prometheus_client's parser."""

import os
import threading

import fixtures
from prometheus_client import parser

from nova_lifecycle import concurrency
from nova_lifecycle.eventpath import libvirt_events
from nova_lifecycle.tests.unit import test_driver
from nova_lifecycle.tests.unit import test_report
from nova_lifecycle.virt import metrics

WAIT = 10
UUID = test_driver.UUID
P = metrics.PREFIX


def read(path):
    """{(sample name, sorted labels): value} of a text-format file."""
    with open(path) as source:
        text = source.read()
    samples = {}
    for family in parser.text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = (
                sample.value)
    return samples


class MetricsTest(test_report.HeldStoppedTestCase):

    def setUp(self):
        super().setUp()
        self.path = os.path.join(self.useFixture(fixtures.TempDir()).path,
                                 'nova_lifecycle.prom')

    def test_values_after_a_known_sequence(self):
        metrics.write_textfile(self.driver, self.path)
        got = read(self.path)
        self.assertEqual(3, got[(P + 'events_received_total', ())])
        self.assertEqual(1, got[(P + 'events_ended_total', (
            ('outcome', 'delivered'), ('reason', '')))])
        self.assertEqual(1, got[(P + 'events_ended_total', (
            ('outcome', 'failed'), ('reason', 'BadLifecycleEvent')))])
        self.assertEqual(1, got[(P + 'events_pending', ())])
        self.assertEqual(1, got[(P + 'held_stopped_events', ())])
        self.assertGreater(got[(P + 'oldest_pending_event_age_seconds',
                                ())], 0)
        self.assertEqual(0, got[(P + 'dispatch_queue_depth', ())])
        self.assertEqual(0, got[(P + 'events_awaiting_retry', ())])
        self.assertNotIn(P + 'delivery_retries_total',
                         {name for name, _ in got})
        # The one delivered event was timed; the held one not yet.
        self.assertEqual(1, got[(P + 'delivery_latency_seconds_count', ())])
        self.assertEqual(1, got[(P + 'delivery_latency_seconds_bucket',
                                 (('le', '+Inf'),))])
        self.assertEqual(1, got[(P + 'libvirt_loop_running', ())])
        self.assertEqual(0, got[(P + 'libvirt_loop_failures_total', ())])
        self.assertEqual(0, got[(P + 'libvirt_connections_lost_total', ())])

        # The reboot's STARTED ends the held STOPPED.
        self.conn._emit_lifecycle(
            self.dom, libvirt_events.DOMAIN_EVENT_STARTED, 0)
        self.assertTrue(self.driver.event_path.wait_for_counts(
            lambda c: (c['received'], c['pending']) == (4, 0), WAIT))
        metrics.write_textfile(self.driver, self.path)
        got = read(self.path)
        self.assertEqual(1, got[(P + 'events_ended_total', (
            ('outcome', 'cancelled'), ('reason', 'superseded by Started')))])
        self.assertEqual(2, got[(P + 'events_ended_total', (
            ('outcome', 'delivered'), ('reason', '')))])
        self.assertEqual(0, got[(P + 'held_stopped_events', ())])
        self.assertEqual(0, got[(P + 'events_pending', ())])
        self.assertEqual(0, got[(P + 'oldest_pending_event_age_seconds',
                                 ())])
        self.assertEqual(2, got[(P + 'delivery_latency_seconds_count', ())])

    def test_the_writer_thread_writes_and_stops(self):
        self.flags(metrics_textfile=self.path, metrics_interval=3600,
                   group='lifecycle')
        written = threading.Event()
        writes = []
        write = metrics.write_textfile

        def write_and_tell(driver, path):
            write(driver, path)
            writes.append(path)
            written.set()

        self.useFixture(fixtures.MonkeyPatch(
            'nova_lifecycle.virt.metrics.write_textfile', write_and_tell))
        self.driver._metrics_writer.trigger()
        self.assertTrue(written.wait(WAIT))
        self.assertIn('lifecycle-metrics', concurrency.plugin_threads())
        self.assertEqual(3, read(self.path)[(P + 'events_received_total',
                                             ())])
        self.assertEqual(1, len(writes))
        self.driver.cleanup_host('compute1')
        self.assertNotIn('lifecycle-metrics', concurrency.plugin_threads())
        # One last write at the stop, long before the next interval, once
        # the held STOPPED was dropped by the shutdown.
        self.assertEqual(2, len(writes))
        got = read(self.path)
        self.assertEqual(0, got[(P + 'events_pending', ())])
        self.assertEqual(1, got[(P + 'events_ended_total', (
            ('outcome', 'cancelled'), ('reason', 'shutdown')))])

    def test_an_unwritable_file_is_one_warning(self):
        stopping = threading.Event()
        tries = []
        write = metrics.write_textfile

        def write_then_stop(driver, path):
            tries.append(path)
            if len(tries) == 3:
                stopping.set()
            write(driver, path)

        self.useFixture(fixtures.MonkeyPatch(
            'nova_lifecycle.virt.metrics.write_textfile', write_then_stop))
        conf = type('Conf', (), {'metrics_textfile': '/nonexistent/x.prom',
                                 'metrics_interval': 0})
        metrics.run_textfile_writer(self.driver, conf, stopping)
        # The third write saw the stop coming; the last one is the stop's.
        self.assertEqual(4, len(tries))
        self.assertEqual(1, self.stdlog.logger.output.count(
            'Cannot write nova-lifecycle metrics'))
