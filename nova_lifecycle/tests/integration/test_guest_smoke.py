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

"""What a real libvirtd + QEMU (TCG) tells about a guest's power changes.

No Nova here: libvirt-python, the tiny guest and libvirt's lifecycle and
reboot events. The expected sequences are the ones libvirt 9.0 / QEMU 7.2
(Debian 12) were seen to send; the plugin's decisions rest on them (a
STOPPED's detail, the SHUTDOWN event's GUEST or HOST before it).
"""

from nova_lifecycle.tests.integration import base


# Every domain starts with these two: libvirt starts QEMU paused (-S),
# then resumes it.
BOOT = ['RESUMED_UNPAUSED', 'STARTED_BOOTED']


class TestGuestSmoke(base.IntegrationTestCase):

    def assertEvents(self, expected, guest, optional=()):
        """libvirt sent exactly these events, ``optional`` ones left out.

        An optional event may come or not (it races).
        """
        seen = [e for e in guest.events() if e not in optional]
        self.assertEqual(expected, seen,
                         'events:\n' + '\n'.join(guest.timeline()))

    def test_acpi_shutdown_honoured(self):
        guest = self.boot('lc.acpi=honour')
        guest.wait_event('STARTED_BOOTED')
        guest.wait_ready()
        guest.shutdown()
        guest.wait_event('STOPPED_SHUTDOWN')
        guest.wait_off()
        self.assertIn(base.PRESS_HONOURED % 1, guest.console())
        # The ACPI request itself sends nothing. It ends in a power-off the
        # guest performs, so QEMU says guest-initiated and libvirt sends
        # SHUTDOWN_GUEST, as for a guest that powers off by itself: no
        # SHUTDOWN_HOST for a host's ACPI request.
        self.assertEvents(BOOT + ['SHUTDOWN_GUEST', 'STOPPED_SHUTDOWN'],
                          guest)

    def test_guest_powers_off_by_itself(self):
        guest = self.boot('lc.poweroff_after=1')
        guest.wait_ready()
        guest.wait_event('STOPPED_SHUTDOWN')
        guest.wait_off()
        self.assertEvents(BOOT + ['SHUTDOWN_GUEST', 'STOPPED_SHUTDOWN'],
                          guest)

    def test_acpi_ignored_then_destroy(self):
        guest = self.boot('lc.acpi=ignore')
        guest.wait_ready()
        guest.shutdown()
        guest.wait_console(base.PRESS_IGNORED % 1)
        guest.assert_stays_running(2)
        guest.destroy()
        guest.wait_event('STOPPED_DESTROYED')
        guest.wait_off()
        # libvirt ends QEMU with a signal: QEMU reports a shutdown the host
        # asked for, SHUTDOWN_HOST, before the STOPPED_DESTROYED.
        self.assertEvents(BOOT + ['SHUTDOWN_HOST', 'STOPPED_DESTROYED'],
                          guest)

    def test_acpi_ignored_twice_then_honoured(self):
        guest = self.boot('lc.acpi_ignore=2')
        guest.wait_ready()
        for press in (1, 2):
            guest.shutdown('shutdown() #%d' % press)
            guest.wait_console(base.PRESS_IGNORED % press)
            guest.assert_stays_running(0.5)
        guest.shutdown('shutdown() #3')
        guest.wait_console(base.PRESS_HONOURED % 3)
        guest.wait_event('STOPPED_SHUTDOWN')
        guest.wait_off()
        # Ignored requests send no event at all.
        self.assertEvents(BOOT + ['SHUTDOWN_GUEST', 'STOPPED_SHUTDOWN'],
                          guest)

    def test_guest_reboots_by_itself(self):
        guest = self.boot('lc.reboot_after=1')
        guest.wait_ready()
        guest.wait_event('REBOOT')
        # The same command line: it boots again (and would reboot again).
        guest.wait_ready(count=2)
        self.assertEqual('running', guest.state())
        # A reset is no lifecycle change: only REBOOT events (3 per reset
        # were seen), no STOPPED, no second STARTED.
        self.assertEvents(BOOT, guest, optional=['REBOOT'])
        guest.destroy()
        guest.wait_event('STOPPED_DESTROYED')

    def test_guest_panics_on_crash_destroy(self):
        guest = self.boot('lc.panic_after=1', on_crash='destroy')
        guest.wait_ready()
        guest.wait_event('STOPPED_CRASHED')
        guest.wait_off()
        # QEMU pauses a panicked guest; libvirt's SUSPENDED_PAUSED for it
        # comes or not (seen both ways), always before CRASHED_PANICKED.
        self.assertEvents(BOOT + ['CRASHED_PANICKED', 'STOPPED_CRASHED'],
                          guest, optional=['SUSPENDED_PAUSED'])
        self.assertNotIn('SUSPENDED_PAUSED',
                         guest.events()[guest.events().index(
                             'CRASHED_PANICKED'):])

    def test_guest_panics_on_crash_preserve(self):
        guest = self.boot('lc.panic_after=1', on_crash='preserve')
        guest.wait_ready()
        guest.wait_event('CRASHED_PANICKED')
        guest.wait_until(lambda: guest.state() == 'crashed',
                         'state crashed')
        guest.assert_state_for('crashed', 1)
        guest.destroy()
        guest.wait_event('STOPPED_DESTROYED')
        self.assertEvents(BOOT + ['CRASHED_PANICKED', 'SHUTDOWN_HOST',
                                  'STOPPED_DESTROYED'],
                          guest, optional=['SUSPENDED_PAUSED'])
