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

"""The conformance harness (conformance/, beside the package): its verdict
and the substitutions it makes in Nova."""

import os
import tempfile
import textwrap
import types

import fixtures
from nova import test
from nova.virt import driver as virt_driver
from nova.virt import fake
from nova.virt import libvirt as libvirt_package
from nova.virt.libvirt import driver as libvirt_driver

from conformance import run
from conformance import substitute
from nova_lifecycle.virt import driver as lc_driver

TEST_A = 'nova.tests.x.Test.test_a'
TEST_B = 'nova.tests.x.Test.test_b'
TEST_C = 'nova.tests.x.Test.test_c'


class VerdictTest(test.NoDBTestCase):

    def test_only_unlisted_differences_are_unexpected(self):
        upstream = {TEST_A: run.PASSED, TEST_B: run.PASSED,
                    TEST_C: run.SKIPPED}
        plugin = {TEST_A: run.FAILED, TEST_B: run.PASSED}
        unexpected, seen, stale = run.compare(upstream, plugin, {})
        # A failure, and a test that did not run at all on the plugin.
        self.assertEqual([TEST_A, TEST_C], unexpected)
        self.assertEqual(([TEST_C], [TEST_A], []),
                         run.compare(upstream, plugin, {TEST_A: {}}))

    def test_a_listed_test_that_no_longer_differs_is_stale(self):
        same = {TEST_A: run.PASSED}
        self.assertEqual(([], [], [TEST_A]),
                         run.compare(same, same, {TEST_A: {}}))

    def test_outcomes_file_round_trip(self):
        outcomes = {TEST_B: run.FAILED, TEST_A: run.PASSED}
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, 'baseline.txt')
            run.write_outcomes(path, outcomes, 'header')
            with open(path) as f:
                self.assertEqual('# header\npassed %s\nfailed %s\n'
                                 % (TEST_A, TEST_B), f.read())
            self.assertEqual(outcomes, run.read_outcomes(path))

    def write_list(self, text):
        tmp = self.useFixture(fixtures.TempDir()).path
        path = os.path.join(tmp, 'expected.yaml')
        with open(path, 'w') as f:
            f.write(text)
        self.useFixture(fixtures.MonkeyPatch('conformance.run.EXPECTED',
                                             path))

    def test_expected_entries_apply_by_suite_release_and_mode(self):
        self.write_list('''
- {test: a, suite: unit, behaviour: b, why: w, covered_by: c}
- {test: b, suite: unit, behaviour: b, why: w, covered_by: c, nova: [33]}
- {test: c, suite: unit, behaviour: b, why: w, covered_by: c,
   modes: [eventlet]}
- {test: d, suite: functional, behaviour: b, why: w, covered_by: c}
''')
        self.assertEqual(['a', 'c'], sorted(
            run.load_expected('unit', '34.0.0', 'eventlet')))
        self.assertEqual(['a', 'b'], sorted(
            run.load_expected('unit', '33.0.2', 'threading')))

    def test_an_entry_without_its_reason_is_refused(self):
        self.write_list('- {test: a, suite: unit, covered_by: c}\n')
        self.assertRaises(SystemExit, run.load_expected, 'unit', '34.0.0',
                          'threading')

    def test_the_checked_in_list_is_complete(self):
        """Every entry of the real list names its behaviour and test."""
        for suite in run.SUITES:
            for mode in run.MODES:
                for entry in run.load_expected(suite, '34.0.0',
                                               mode).values():
                    self.assertTrue(entry['why'].strip(), entry['test'])


class DefaultModesTest(test.NoDBTestCase):
    """Each release's suites run in the modes its nova-compute has."""

    def test_modes_per_release_and_suite(self):
        both = ('threading', 'eventlet')
        expected = {
            '31.3.1': {'unit': ('eventlet',), 'compute': ('eventlet',),
                       'functional': ('eventlet',)},
            '32.2.1': {'unit': ('eventlet',), 'compute': ('eventlet',),
                       'functional': ('eventlet',)},
            '33.0.2': {'unit': ('eventlet',), 'compute': both,
                       'functional': ('eventlet',)},
            '34.0.0': {'unit': both, 'compute': both,
                       'functional': ('threading',)},
        }
        for release, suites in expected.items():
            for suite, modes in suites.items():
                self.assertEqual(modes, run.default_modes(suite, release),
                                 (release, suite))


class SubstitutionTest(test.NoDBTestCase):

    def test_unit_binds_a_plugin_class_with_upstreams_static_methods(self):
        for name in ('nova.virt.libvirt.driver.LibvirtDriver',
                     'nova.virt.libvirt.LibvirtDriver'):
            self.useFixture(fixtures.MonkeyPatch(
                name, libvirt_driver.LibvirtDriver))
        upstream = libvirt_driver.LibvirtDriver
        substitute.unit()
        bound = libvirt_driver.LibvirtDriver
        self.assertIs(bound, libvirt_package.LibvirtDriver)
        self.assertTrue(issubclass(bound, lc_driver.LibvirtLifecycleDriver))
        self.assertEqual('LibvirtDriver', bound.__name__)
        # A static method upstream defines sits in the class's own
        # namespace, so patching tools restore it as a static method.
        self.assertIsInstance(vars(bound)['_uri'], staticmethod)
        self.assertIs(upstream._uri, bound._uri)

    def test_functional_loads_the_plugin_for_upstreams_name(self):
        self.useFixture(fixtures.MonkeyPatch(
            'nova.virt.driver.load_compute_driver',
            virt_driver.load_compute_driver))
        imported = []

        def import_object(name, virtapi):
            imported.append(name)
            return virt_driver.ComputeDriver(virtapi)

        self.useFixture(fixtures.MonkeyPatch(
            'nova.virt.driver.importutils.import_object', import_object))
        substitute.functional()
        virt_driver.load_compute_driver(fake.FakeVirtAPI(),
                                        substitute.UPSTREAM_DRIVER)
        virt_driver.load_compute_driver(fake.FakeVirtAPI(),
                                        'fake.FakeDriver')
        self.assertEqual(['nova.virt.' + substitute.PLUGIN_DRIVER,
                          'nova.virt.fake.FakeDriver'], imported)


class ExplicitSuperTest(test.NoDBTestCase):
    """Nova 31/32's ``super(LibvirtDriver, self)`` under the rebound name."""

    def test_upstream_parent_is_reached_once(self):
        module = types.ModuleType('nova_like_driver')
        exec(textwrap.dedent("""
            class ComputeDriver:
                def __init__(self, calls):
                    calls.append('base')

            class LibvirtDriver(ComputeDriver):
                def __init__(self, calls):
                    calls.append('upstream')
                    super(LibvirtDriver, self).__init__(calls)
            """), module.__dict__)
        upstream = module.LibvirtDriver
        substitute._keep_explicit_super(upstream, module)

        class Plugin(upstream):
            def __init__(self, calls):
                calls.append('plugin')
                super().__init__(calls)

        module.LibvirtDriver = type('LibvirtDriver', (Plugin,), {})
        calls = []
        module.LibvirtDriver(calls)
        self.assertEqual(['plugin', 'upstream', 'base'], calls)
