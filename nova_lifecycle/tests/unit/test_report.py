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

"""The operator's view: Guru Meditation section and periodic stats line."""

import threading

import fixtures
from nova.tests.fixtures import libvirt as fakelibvirt
from nova import version
from oslo_reports import guru_meditation_report as gmr

from nova_lifecycle.eventpath import libvirt_events
from nova_lifecycle.tests.unit import test_driver
from nova_lifecycle.virt import host as lc_host
from nova_lifecycle.virt import status_report

WAIT = 10
UUID = test_driver.UUID


class HeldStoppedTestCase(test_driver.DriverTestCase):
    """A domain created, then destroyed: its STOPPED is held (60 s)."""

    def setUp(self):
        super().setUp()
        self.flags(stopped_event_delay=60, group='lifecycle')
        self.driver.register_event_listener(self.listener)
        self.conn = self.start_events()
        self.dom = self.conn.createXML(test_driver.DOMAIN_XML, 0)
        self.conn._emit_lifecycle(
            self.dom, libvirt_events.DOMAIN_EVENT_STOPPED,
            libvirt_events.DOMAIN_EVENT_STOPPED_DESTROYED)
        # Nova's fake sends a STARTED before the domain can be read (one
        # failed event), then the real one (delivered); the STOPPED stays
        # held.
        self.assertTrue(self.driver.event_path.wait_for_counts(
            lambda s: (s['received'], s['delivered'], s['failed'],
                       s['pending']) == (3, 1, 1, 1), WAIT))


class ReportTest(HeldStoppedTestCase):

    def setUp(self):
        super().setUp()
        status_report.register(self.driver)

    def test_status_accounts_for_every_event(self):
        status = status_report.status(self.driver)
        counts = status['events']
        self.assertEqual(counts['received'],
                         counts['delivered'] + counts['cancelled'] +
                         counts['failed'] + counts['pending'])
        self.assertEqual(1, counts['pending'])
        self.assertEqual([UUID], list(status['held STOPPED events']))
        self.assertIn('lifecycle-libvirt-loop', status['threads'])

    def test_guru_meditation_report_has_the_section(self):
        text = gmr.TextGuruMeditation(version).run()
        self.assertIn(status_report.SECTION, text)
        section = text[text.index(status_report.SECTION):]
        self.assertIn(UUID, section)
        self.assertIn('delivered in', section)
        self.assertIn('lifecycle-libvirt-loop', section)

    def test_a_failing_libvirt_loop_is_reported(self):
        logs = self.useFixture(fixtures.FakeLogger())
        warned = threading.Event()
        warning = lc_host.LOG.warning

        def warn(*args, **kwargs):
            warning(*args, **kwargs)
            warned.set()

        self.useFixture(fixtures.MockPatchObject(
            lc_host.LOG, 'warning', side_effect=warn))
        failed = []
        run = fakelibvirt.virEventRunDefaultImpl

        def failing_once():
            if not failed:
                failed.append(True)
                raise fakelibvirt.make_libvirtError(
                    fakelibvirt.libvirtError, 'poll failed',
                    error_code=fakelibvirt.VIR_ERR_INTERNAL_ERROR)
            return run()

        self.useFixture(fixtures.MonkeyPatch(
            'nova.tests.fixtures.libvirt.virEventRunDefaultImpl',
            failing_once))
        # Written on the Host's connection-event thread, not libvirt's.
        self.assertTrue(warned.wait(WAIT))
        self.assertIn('libvirt event loop failed (1 time(s) in a row)',
                      logs.output)
        self.assertIn('poll failed', logs.output)
        loop = status_report.status(self.driver)['libvirt event loop']
        self.assertEqual(1, loop['failures'])
        self.assertIn('poll failed', loop['last error'])
        self.assertTrue(loop['running'])
        text = gmr.TextGuruMeditation(version).run()
        self.assertIn('poll failed', text[text.index(status_report.SECTION):])

    def test_log_line(self):
        logs = self.useFixture(fixtures.FakeLogger())
        status_report.log_line(self.driver)
        self.assertIn('events received', logs.output)
        self.assertIn('1 STOPPED held', logs.output)

    def test_periodic_stats_thread(self):
        self.flags(stats_log_interval=1, group='lifecycle')
        logged = threading.Event()
        self.useFixture(fixtures.MockPatch(
            'nova_lifecycle.virt.status_report.log_line',
            side_effect=lambda driver: logged.set()))
        self.useFixture(fixtures.MonkeyPatch(
            'nova_lifecycle.virt.driver.CONF.lifecycle.stats_log_interval',
            0.01))
        self.driver._stats_logger.trigger()
        self.assertTrue(logged.wait(WAIT))
        self.driver.cleanup_host('compute1')
        self.assertFalse(self.driver._stats_logger.is_running())
