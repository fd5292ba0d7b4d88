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

"""Translation of libvirt lifecycle callbacks into Nova events."""

import fixtures
from nova import test
from nova.tests.fixtures import libvirt as fakelibvirt
from nova.virt import event as virtevent

from nova_lifecycle.eventpath import libvirt_events

UUID = '11111111-2222-3333-4444-555555555555'


class Dom:
    """Just enough of a virDomain for the translation."""

    def __init__(self, uuid=UUID, error=None):
        self._uuid = uuid
        self._error = error

    def UUIDString(self):
        if self._error:
            raise self._error
        return self._uuid


# libvirt's event types, by their names in libvirt_events.
STARTED = libvirt_events.DOMAIN_EVENT_STARTED
SUSPENDED = libvirt_events.DOMAIN_EVENT_SUSPENDED
RESUMED = libvirt_events.DOMAIN_EVENT_RESUMED
STOPPED = libvirt_events.DOMAIN_EVENT_STOPPED

# (libvirt event, detail) -> Nova transition, as upstream Nova maps them.
TRANSITIONS = [
    (STARTED, 0, virtevent.EVENT_LIFECYCLE_STARTED),
    (STARTED, 1, virtevent.EVENT_LIFECYCLE_STARTED),
    (STARTED, 2, virtevent.EVENT_LIFECYCLE_STARTED),
    (SUSPENDED, 0, virtevent.EVENT_LIFECYCLE_PAUSED),
    (SUSPENDED, 2, virtevent.EVENT_LIFECYCLE_PAUSED),
    (SUSPENDED, 7, virtevent.EVENT_LIFECYCLE_POSTCOPY_STARTED),
    (RESUMED, 0, virtevent.EVENT_LIFECYCLE_RESUMED),
    (RESUMED, 1, virtevent.EVENT_LIFECYCLE_RESUMED),
    (STOPPED, 0, virtevent.EVENT_LIFECYCLE_STOPPED),
    (STOPPED, 1, virtevent.EVENT_LIFECYCLE_STOPPED),
    (STOPPED, 2, virtevent.EVENT_LIFECYCLE_STOPPED),
    (STOPPED, 3, virtevent.EVENT_LIFECYCLE_STOPPED),
    (STOPPED, 5, virtevent.EVENT_LIFECYCLE_STOPPED),
]


class TranslateTest(test.NoDBTestCase):

    def setUp(self):
        super().setUp()
        self.useFixture(fakelibvirt.LibvirtFixture())

    def test_transition_table(self):
        for libvirt_event, detail, transition in TRANSITIONS:
            event = libvirt_events.translate(Dom(), libvirt_event, detail)
            self.assertIsInstance(event, virtevent.LifecycleEvent)
            self.assertEqual((UUID, transition, libvirt_event, detail),
                             (event.uuid, event.transition,
                              event.libvirt_event, event.libvirt_detail))
            self.assertIsNone(event.error)

    def test_detail_names_are_kept(self):
        for detail, name in [(0, 'STOPPED_SHUTDOWN'),
                             (1, 'STOPPED_DESTROYED'),
                             (2, 'STOPPED_CRASHED')]:
            event = libvirt_events.translate(
                Dom(), libvirt_events.DOMAIN_EVENT_STOPPED, detail)
            self.assertEqual(name, event.detail_name)
            self.assertIn(name, str(event))

    def test_types_nova_does_not_act_on_are_dropped(self):
        # DEFINED, UNDEFINED, PMSUSPENDED, CRASHED
        for libvirt_event in (0, 1, 7, 8):
            self.assertIsNone(libvirt_events.translate(
                Dom(), libvirt_event, 0))

    def test_translator_puts_who_asked_on_the_stopped(self):
        translator = libvirt_events.EventTranslator()
        stopped = libvirt_events.DOMAIN_EVENT_STOPPED
        self.assertIsNone(translator.translate(
            Dom(), libvirt_events.DOMAIN_EVENT_SHUTDOWN,
            libvirt_events.DOMAIN_EVENT_SHUTDOWN_GUEST))
        event = translator.translate(
            Dom(), stopped, libvirt_events.DOMAIN_EVENT_STOPPED_SHUTDOWN)
        self.assertEqual(libvirt_events.DOMAIN_EVENT_SHUTDOWN_GUEST,
                         event.shutdown_detail)
        # The note is used once: the next STOPPED says nothing of it.
        event = translator.translate(
            Dom(), stopped, libvirt_events.DOMAIN_EVENT_STOPPED_SHUTDOWN)
        self.assertIsNone(event.shutdown_detail)
        # The stateless translate never keeps SHUTDOWN.
        self.assertIsNone(libvirt_events.translate(
            Dom(), libvirt_events.DOMAIN_EVENT_SHUTDOWN,
            libvirt_events.DOMAIN_EVENT_SHUTDOWN_HOST))

    def test_any_later_event_of_the_domain_uses_up_the_note(self):
        translator = libvirt_events.EventTranslator()
        translator.translate(Dom(), libvirt_events.DOMAIN_EVENT_SHUTDOWN,
                             libvirt_events.DOMAIN_EVENT_SHUTDOWN_GUEST)
        started = translator.translate(
            Dom(), libvirt_events.DOMAIN_EVENT_STARTED, 0)
        self.assertEqual(libvirt_events.DOMAIN_EVENT_SHUTDOWN_GUEST,
                         started.shutdown_detail)
        stopped = translator.translate(
            Dom(), libvirt_events.DOMAIN_EVENT_STOPPED,
            libvirt_events.DOMAIN_EVENT_STOPPED_DESTROYED)
        self.assertIsNone(stopped.shutdown_detail)

    def test_notes_of_domains_that_never_stop_are_bounded(self):
        translator = libvirt_events.EventTranslator(max_notes=3)
        uuids = ['00000000-0000-0000-0000-%012d' % i for i in range(10)]
        for uuid in uuids:
            translator.translate(
                Dom(uuid=uuid), libvirt_events.DOMAIN_EVENT_SHUTDOWN,
                libvirt_events.DOMAIN_EVENT_SHUTDOWN_GUEST)
        for uuid, kept in ((uuids[-1], True), (uuids[-3], True),
                           (uuids[-4], False), (uuids[0], False)):
            event = translator.translate(
                Dom(uuid=uuid), libvirt_events.DOMAIN_EVENT_STOPPED,
                libvirt_events.DOMAIN_EVENT_STOPPED_SHUTDOWN)
            self.assertEqual(kept, event.shutdown_detail is not None, uuid)

    def test_shutdown_of_an_unreadable_domain_is_only_skipped(self):
        translator = libvirt_events.EventTranslator()
        self.assertIsNone(translator.translate(
            Dom(error=RuntimeError('gone')),
            libvirt_events.DOMAIN_EVENT_SHUTDOWN,
            libvirt_events.DOMAIN_EVENT_SHUTDOWN_GUEST))

    def test_why_a_domain_stopped(self):
        def stopped(detail, shutdown=None):
            event = libvirt_events.translate(Dom(), STOPPED, detail)
            event.shutdown_detail = shutdown
            return libvirt_events.stop_reason(event)

        shutdown = libvirt_events.DOMAIN_EVENT_STOPPED_SHUTDOWN
        self.assertEqual('guest shut down by itself', stopped(
            shutdown, libvirt_events.DOMAIN_EVENT_SHUTDOWN_GUEST))
        self.assertEqual("shut down at the host's request", stopped(
            shutdown, libvirt_events.DOMAIN_EVENT_SHUTDOWN_HOST))
        self.assertEqual('shut down', stopped(shutdown))
        self.assertEqual('guest crashed', stopped(
            libvirt_events.DOMAIN_EVENT_STOPPED_CRASHED))
        self.assertEqual('QEMU process failed', stopped(
            libvirt_events.DOMAIN_EVENT_STOPPED_FAILED))
        self.assertEqual('destroyed (powered off at the host)', stopped(
            libvirt_events.DOMAIN_EVENT_STOPPED_DESTROYED))
        self.assertEqual('libvirt detail 42', stopped(42))
        self.assertEqual('not said (no libvirt detail)',
                         libvirt_events.stop_reason(virtevent.LifecycleEvent(
                             UUID, virtevent.EVENT_LIFECYCLE_STOPPED)))

    def test_unknown_type_is_kept_without_transition(self):
        event = libvirt_events.translate(Dom(), 42, 3)
        self.assertIsNone(event.transition)
        self.assertEqual('UNKNOWN(42)_UNKNOWN(3)', event.detail_name)
        self.assertFalse(event.is_known)

    def test_unknown_detail_keeps_the_transition(self):
        event = libvirt_events.translate(
            Dom(), libvirt_events.DOMAIN_EVENT_STOPPED, 99)
        self.assertEqual(virtevent.EVENT_LIFECYCLE_STOPPED, event.transition)
        self.assertFalse(event.is_known)
        self.assertEqual('STOPPED_UNKNOWN(99)', event.detail_name)

    def test_domain_without_uuid_is_recorded_not_raised(self):
        error = fakelibvirt.make_libvirtError(
            fakelibvirt.libvirtError, 'Domain not found',
            error_code=fakelibvirt.VIR_ERR_NO_DOMAIN)
        event = libvirt_events.translate(
            Dom(error=error), libvirt_events.DOMAIN_EVENT_STOPPED, 0)
        self.assertIsNone(event.uuid)
        self.assertIn('Domain not found', event.error)

    def _migrated(self, job_type):
        self.useFixture(fixtures.MockPatch(
            'nova.virt.libvirt.guest.Guest.get_job_info',
            return_value=type('JobInfo', (), {'type': job_type})()))
        return libvirt_events.translate(
            Dom(), libvirt_events.DOMAIN_EVENT_SUSPENDED,
            libvirt_events.DOMAIN_EVENT_SUSPENDED_MIGRATED)

    def test_suspended_migrated_with_completed_job(self):
        event = self._migrated(fakelibvirt.VIR_DOMAIN_JOB_COMPLETED)
        self.assertEqual(virtevent.EVENT_LIFECYCLE_MIGRATION_COMPLETED,
                         event.transition)

    def test_suspended_migrated_with_failed_job_is_paused(self):
        event = self._migrated(fakelibvirt.VIR_DOMAIN_JOB_FAILED)
        self.assertEqual(virtevent.EVENT_LIFECYCLE_PAUSED, event.transition)

    def test_unreadable_migration_job_is_paused_with_error(self):
        self.useFixture(fixtures.MockPatch(
            'nova.virt.libvirt.guest.Guest.get_job_info',
            side_effect=fakelibvirt.libvirtError('connection lost')))
        event = libvirt_events.translate(
            Dom(), libvirt_events.DOMAIN_EVENT_SUSPENDED,
            libvirt_events.DOMAIN_EVENT_SUSPENDED_MIGRATED)
        self.assertEqual(virtevent.EVENT_LIFECYCLE_PAUSED, event.transition)
        self.assertIn('connection lost', event.error)
        self.assertEqual(UUID, event.uuid)

    def test_received_at_is_monotonic_time(self):
        import time
        before = time.monotonic()
        event = libvirt_events.translate(
            Dom(), libvirt_events.DOMAIN_EVENT_STARTED, 0)
        self.assertGreaterEqual(event.received_at, before)
        self.assertLessEqual(event.received_at, time.monotonic())
