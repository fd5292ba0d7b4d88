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

"""SIGTERM to a nova-compute process on the plugin, during an event burst.

The process is :mod:`sigterm_compute` (Nova's deployment in one process,
the compute run by oslo.service's launcher as ``nova-compute`` runs it).
It must exit on its own, with status 0, within ``graceful_shutdown_timeout``
(the launcher's SIGALRM would end it with status 1), and its log must show
the plugin's drain: one line per STOPPED event still held, and a last line
where every event received is accounted for and no thread is left.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

import fixtures
from testtools import content

from nova_lifecycle.tests import base
from nova_lifecycle.tests.functional import sigterm_compute

# Seconds the process may take to boot its servers and start the burst.
START_TIMEOUT = 150
DRAIN_LINE = ('Pending STOPPED event for instance %s dropped by shutdown; '
              'the power state sync at the next start-up reconciles it.')
STOPPED_LINE = re.compile(
    r'nova-lifecycle stopped: (\d+) events received, (\d+) delivered, '
    r'(\d+) cancelled, (\d+) failed, (\d+) pending; (.*)$')
# Test-runner settings the child must not inherit: they would capture its
# output or arm a timeout of their own on SIGALRM.
_RUNNER_ENV = ('OS_STDOUT_CAPTURE', 'OS_STDERR_CAPTURE', 'OS_LOG_CAPTURE',
               'OS_TEST_TIMEOUT', 'OS_DEBUG')


class SigtermTest(base.TestCase):

    timeout = START_TIMEOUT + 60

    def start_compute_process(self):
        workdir = self.useFixture(fixtures.TempDir()).path
        env = {k: v for k, v in os.environ.items() if k not in _RUNNER_ENV}
        output = open(os.path.join(workdir, 'output.txt'), 'wb')
        self.addCleanup(output.close)
        proc = subprocess.Popen(
            [sys.executable, '-m', sigterm_compute.__name__, workdir],
            env=env, stdout=output, stderr=subprocess.STDOUT)
        self.addCleanup(self._reap, proc)
        ready = os.path.join(workdir, 'ready.json')
        deadline = time.monotonic() + START_TIMEOUT
        while not os.path.exists(ready):
            if proc.poll() is not None or time.monotonic() > deadline:
                self.fail('compute process not ready (status %s):\n%s'
                          % (proc.poll(), self._read(workdir, 'output.txt')))
            time.sleep(0.2)
        with open(ready) as f:
            return proc, workdir, json.load(f)

    @staticmethod
    def _reap(proc):
        if proc.poll() is None:
            proc.kill()
        proc.wait()

    @staticmethod
    def _read(workdir, name):
        with open(os.path.join(workdir, name), errors='replace') as f:
            return f.read()

    def test_sigterm_during_event_burst_exits_in_time_after_drain(self):
        proc, workdir, ready = self.start_compute_process()
        held = ready['held']
        self.assertEqual(sigterm_compute.HELD, len(held))
        # The burst is being processed.
        self.assertGreater(ready['stats']['dispatch_queue'], 0, ready)

        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            status = proc.wait(
                sigterm_compute.GRACEFUL_SHUTDOWN_TIMEOUT + 10)
        except subprocess.TimeoutExpired:
            self.fail('the compute process did not exit')
        took = time.monotonic() - sent

        log = self._read(workdir, 'compute.log')
        self.addDetail('compute.log', content.text_content(log))
        self.addDetail('sigterm-to-exit',
                       content.text_content('%.2f s' % took))
        self.assertEqual(0, status, 'exit status (1: the launcher\'s alarm)')
        self.assertLess(took, sigterm_compute.GRACEFUL_SHUTDOWN_TIMEOUT)
        for uuid in held:
            self.assertEqual(1, log.count(DRAIN_LINE % uuid), uuid)
        self.assertEqual(len(held), log.count('dropped by shutdown;'))
        stopped = [STOPPED_LINE.search(line) for line in log.splitlines()
                   if 'nova-lifecycle stopped:' in line]
        self.assertEqual(1, len(stopped), stopped)
        self.assertIsNotNone(stopped[0])
        received, delivered, cancelled, failed, pending = (
            int(n) for n in stopped[0].groups()[:5])
        self.assertEqual(received, delivered + cancelled + failed + pending)
        self.assertEqual(0, pending)
        self.assertEqual(0, failed)
        self.assertEqual('no thread left', stopped[0].group(6))
        # Events kept coming after the process said it was ready.
        self.assertGreater(received, ready['stats']['received'])
        # The burst was cut short: more than the held STOPPEDs cancelled.
        self.assertGreater(cancelled, len(held))
