#    Licensed under the Apache License, Version 2.0 (the "License"); you may
#    not use this file except in compliance with the License. You may obtain
#    a copy of the License at
#
#         http://www.apache.org/licenses/LICENSE-2.0
#
#    Unless required by applicable law or agreed to in writing, software
#    distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
#    WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
#    License for the specific language governing permissions and limitations
#    under the License.

"""tools/tempest.sh's comparison of the two drivers (``report``).

The script reads the results files of the last run of each driver
(status, seconds, test, reason per line); they are written here, and
Tempest's virtualenv is stood in for by this Python, since the comparison
needs the standard library only. Neither root nor a deployment is needed.
"""

import os
import subprocess
import sys

import fixtures

from nova_lifecycle.tests import base

TOP_DIR = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.dirname(os.path.abspath(__file__)))))
TEMPEST_SH = os.path.join(TOP_DIR, 'tools', 'tempest.sh')
SAMPLE = os.path.join(TOP_DIR, 'tools', 'tempest-upstream-sample.txt')
TESTS = os.path.join(TOP_DIR, 'tools', 'tempest-tests.txt')

STOP = 'tempest.api.compute.servers.test_server_actions.T.test_stop_start'
PAUSE = 'tempest.api.compute.servers.test_server_actions.T.test_pause'
RESIZE = 'tempest.api.compute.servers.test_server_actions.T.test_resize'


class TempestReportTest(base.TestCase):

    def setUp(self):
        super().setUp()
        state = self.useFixture(fixtures.TempDir()).path
        self.results = os.path.join(state, 'tempest', 'results')
        os.makedirs(self.results)
        venv_bin = os.path.join(state, 'venv', 'bin')
        os.makedirs(venv_bin)
        os.symlink(sys.executable, os.path.join(venv_bin, 'python'))
        self.env = dict(os.environ,
                        NOVA_LIFECYCLE_SERVICES_DIR=state,
                        NOVA_LIFECYCLE_TEMPEST_VENV=os.path.join(state,
                                                                 'venv'))

    def _write(self, driver, rows):
        with open(os.path.join(self.results, driver + '.tsv'), 'w') as f:
            for status, test_id in rows:
                f.write('%s\t1.0\t%s[id-x]\t\n' % (status, test_id))

    def _report(self):
        proc = subprocess.run(['bash', TEMPEST_SH, 'report'], env=self.env,
                              capture_output=True, text=True, timeout=30)
        return proc.returncode, proc.stdout + proc.stderr

    def test_a_sample_on_upstream_is_counted_not_compared(self):
        self._write('plugin', [('success', STOP), ('success', PAUSE),
                               ('success', RESIZE)])
        self._write('upstream', [('success', STOP)])
        rc, out = self._report()
        self.assertEqual(0, rc, out)
        self.assertIn('1 of 1 tests run on both drivers end the same', out)
        self.assertIn('2 more ran on the plugin only', out)
        self.assertNotIn('not run on upstream', out)

    def test_a_plugin_failure_fails_and_names_upstreams_outcome(self):
        self._write('plugin', [('success', STOP), ('fail', PAUSE)])
        self._write('upstream', [('success', STOP), ('success', PAUSE)])
        rc, out = self._report()
        self.assertEqual(1, rc, out)
        self.assertIn('FAILED on the plugin (upstream: success): %s' % PAUSE,
                      out)
        self.assertIn('1 of 2 tests run on both drivers end the same', out)

    def test_upstreams_own_failure_is_reported_without_failing(self):
        self._write('plugin', [('success', STOP)])
        self._write('upstream', [('fail', STOP)])
        rc, out = self._report()
        self.assertEqual(0, rc, out)
        self.assertIn('failed on upstream only: %s' % STOP, out)

    def test_the_sample_is_part_of_the_list(self):
        def entries(path):
            with open(path) as f:
                return [line.strip() for line in f
                        if line.startswith('tempest')]
        sample = entries(SAMPLE)
        self.assertTrue(sample)
        self.assertEqual([], sorted(set(sample) - set(entries(TESTS))))
