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

"""The main job's table, plot, command line, verdicts and helpers.

The full run (Nova in one process on each driver) is exercised by
tools/main-job.sh; here the parts around it are checked without Nova's
services: the table and its JSON, the PNG (decoded again), the argument
handling, the runner's verdicts with a stand-in deployment, the fake
guests and the real-mode domain watcher (on libvirt's test driver), and
that their threads end.
"""

import io
import json
import os
import struct
import subprocess
import sys
import time
import zlib

import fixtures
import testtools

from mainjob import cli
from mainjob import fakevirt
from mainjob import plot
from mainjob import realvirt
from mainjob import results
from mainjob import runner
from mainjob import scenarios
from mainjob import tables
from nova_lifecycle import concurrency
from nova_lifecycle.tests import base
from nova_lifecycle.tests import fixtures as lc_fixtures
from nova_lifecycle.tests import testguest

# The checkout, where ``python -m mainjob`` runs.
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))))
PLUGIN, UPSTREAM = results.PLUGIN, results.UPSTREAM


def result(scenario, driver, passed=True, latency=0.5, **kwargs):
    return results.Result(scenario, scenario.replace('-', ' '), driver,
                          passed, latency=latency, **kwargs)


def sample_results():
    return [
        result('boot', PLUGIN, latency=0.12, total=1.5),
        result('guest-poweroff', PLUGIN, latency=2.3),
        result('pause-resume', PLUGIN, latency=0.13, total=0.2,
               steps=[('pause', 0.07), ('resume', 0.13)]),
        result('boot', UPSTREAM, latency=0.18, total=1.2),
        result('guest-poweroff', UPSTREAM, latency=15.7),
        result('pause-resume', UPSTREAM, passed=False, latency=None,
               reason='the API shows ACTIVE', spurious=2),
    ]


def info():
    return results.RunInfo('34.0.0', 'threading', 'fake',
                           {'shutdown_timeout': 3})


class TableTest(base.TestCase):

    def test_an_option_the_release_lacks_is_not_shown(self):
        run = results.RunInfo('31.3.1', 'eventlet', 'fake',
                              {'shutdown_timeout': 3,
                               'manager_shutdown_timeout': None})
        lines = tables.format_table(run, sample_results()).splitlines()
        self.assertEqual('settings: shutdown_timeout=3', lines[1])

    def test_one_row_per_scenario_with_both_drivers(self):
        text = tables.format_table(info(), sample_results())
        lines = text.splitlines()
        self.assertEqual('Main job: nova 34.0.0, threading mode, nova\'s '
                         'fake libvirt', lines[0])
        self.assertEqual('settings: shutdown_timeout=3', lines[1])
        header = next(line for line in lines if line.startswith('scenario'))
        self.assertIn('plugin: result', header)
        self.assertIn('upstream: result', header)
        self.assertLess(header.index('plugin'), header.index('upstream'))
        rows = {line.split('|')[0].strip(): line for line in lines
                if '|' in line and not line.startswith('scenario')}
        self.assertEqual({'boot', 'guest poweroff', 'pause resume'},
                         set(rows))
        plugin, upstream = rows['guest poweroff'].split('|')[1:]
        self.assertEqual(['pass', '2.30', 's', '-', '0'], plugin.split())
        self.assertEqual(['pass', '15.70', 's', '-', '0'], upstream.split())
        plugin, upstream = rows['pause resume'].split('|')[1:]
        self.assertEqual(['FAIL', '-', '-', '2'], upstream.split())

    def test_columns_line_up(self):
        text = tables.format_table(info(), sample_results())
        table = [line for line in text.splitlines() if '|' in line]
        self.assertEqual(1, len({line.index('|') for line in table}))
        self.assertEqual(1, len({line.rindex('|') for line in table}))

    def test_notes_give_reasons_and_steps(self):
        notes = tables.format_notes(sample_results())
        self.assertIn('upstream / pause resume: FAIL: the API shows ACTIVE',
                      notes)
        self.assertIn('plugin / pause resume: steps: pause 0.07 s, '
                      'resume 0.13 s', notes)
        # Only scenarios with more than one step list them.
        self.assertEqual(1, len([n for n in notes if 'steps' in n]))

    def test_a_driver_that_did_not_run(self):
        only_plugin = [r for r in sample_results() if r.driver == PLUGIN]
        text = tables.format_table(info(), only_plugin)
        self.assertIn('not run', text)
        text = tables.format_table(info(), only_plugin, drivers=[PLUGIN])
        self.assertNotIn('upstream', text)

    def test_json_holds_every_result(self):
        data = json.loads(tables.to_json(info(), sample_results()))
        self.assertEqual('34.0.0', data['run']['nova_version'])
        self.assertEqual(6, len(data['results']))
        first = data['results'][0]
        self.assertEqual(('boot', 'plugin', True, 0.12),
                         (first['scenario'], first['driver'],
                          first['passed'], first['latency']))

    def test_exit_status_follows_the_plugin_only(self):
        self.assertEqual(0, tables.exit_status(sample_results()))
        failing = sample_results()
        failing[1].passed = False
        self.assertEqual(1, tables.exit_status(failing))
        self.assertEqual(0, tables.exit_status([]))


def decode_png(data):
    """(width, height, rows of RGB bytes), checking every chunk's CRC."""
    assert data[:8] == b'\x89PNG\r\n\x1a\n', data[:8]
    pos, chunks = 8, {}
    while pos < len(data):
        length, = struct.unpack('>I', data[pos:pos + 4])
        kind = data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        crc, = struct.unpack('>I', data[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xffffffff, kind
        chunks.setdefault(kind, b'')
        chunks[kind] += body
        pos += 12 + length
    width, height, depth, colour, _, _, _ = struct.unpack(
        '>IIBBBBB', chunks[b'IHDR'])
    assert (depth, colour) == (8, 2)
    assert b'IEND' in chunks
    raw = zlib.decompress(chunks[b'IDAT'])
    stride = 1 + 3 * width
    assert len(raw) == stride * height
    rows = [raw[y * stride + 1:(y + 1) * stride] for y in range(height)]
    assert all(raw[y * stride] == 0 for y in range(height))
    return width, height, rows


def colour_run(row, colour):
    """Length of the longest run of ``colour`` pixels in a row."""
    best = run = 0
    for x in range(0, len(row), 3):
        run = run + 1 if tuple(row[x:x + 3]) == colour else 0
        best = max(best, run)
    return best


class PlotTest(base.TestCase):

    def test_png_round_trip(self):
        canvas = plot.Canvas(7, 3)
        canvas.rect(2, 1, 3, 1, (1, 2, 3))
        width, height, rows = decode_png(canvas.png())
        self.assertEqual((7, 3), (width, height))
        self.assertEqual(bytes(plot.WHITE) * 2 + bytes((1, 2, 3)) * 3 +
                         bytes(plot.WHITE) * 2, rows[1])
        self.assertEqual(bytes(plot.WHITE) * 7, rows[0])

    def test_rect_is_clipped(self):
        canvas = plot.Canvas(4, 4)
        canvas.rect(-2, -2, 10, 3, plot.BLACK)
        self.assertEqual(plot.BLACK, canvas.pixel(3, 0))
        self.assertEqual(plot.WHITE, canvas.pixel(0, 1 + 1))

    def test_text_draws_glyphs_and_unknown_characters(self):
        canvas = plot.Canvas(40, 10)
        width = canvas.text(0, 0, 'i1', plot.BLACK)
        self.assertEqual(plot.text_width('i1'), width)
        # 'I' has a full top row from x=1 to x=3.
        self.assertEqual([plot.BLACK] * 3,
                         [canvas.pixel(x, 0) for x in (1, 2, 3)])
        self.assertEqual(plot.WHITE, canvas.pixel(0, 0))
        other = plot.Canvas(40, 10)
        other.text(0, 0, '#')
        question = plot.Canvas(40, 10)
        question.text(0, 0, '?')
        self.assertEqual(question.pixels, other.pixels)

    def test_nice_steps(self):
        self.assertEqual(5, plot.nice_step(16))
        self.assertEqual(0.05, plot.nice_step(0.23))
        self.assertEqual(1, plot.nice_step(6))
        self.assertEqual(1.0, plot.nice_step(0))

    def test_bars_are_proportional_to_latency(self):
        rows = [('a', {PLUGIN: (1.0, True), UPSTREAM: (4.0, True)})]
        canvas = plot.bar_chart(rows, 'title')
        _, _, decoded = decode_png(canvas.png())
        plugin = max(colour_run(r, plot.COLOURS[PLUGIN]) for r in decoded)
        upstream = max(colour_run(r, plot.COLOURS[UPSTREAM])
                       for r in decoded)
        self.assertAlmostEqual(4.0, upstream / plugin, delta=0.1)

    def test_missing_and_failed_values_are_marked(self):
        rows = [('a', {PLUGIN: (1.0, False), UPSTREAM: (None, False)}),
                ('b', {PLUGIN: (2.0, True)})]
        canvas = plot.bar_chart(rows, 'title')
        reds = sum(1 for y in range(canvas.height)
                   for x in range(canvas.width)
                   if canvas.pixel(x, y) == plot.RED)
        self.assertGreater(reds, 0)
        clean = plot.bar_chart([('a', {PLUGIN: (1.0, True),
                                       UPSTREAM: (2.0, True)})], 'title')
        self.assertNotIn(bytes(plot.RED), bytes(clean.pixels))

    def test_a_missing_value_has_no_bar(self):
        # Only the legend's swatch is in upstream's colour: a bar of any
        # length would read as a time on the axis.
        legend_only = plot.bar_chart([('a', {PLUGIN: (1.0, True)})], 't')
        missing = plot.bar_chart([('a', {PLUGIN: (1.0, True),
                                         UPSTREAM: (None, False)})], 't')
        colour = bytes(plot.COLOURS[UPSTREAM])

        def upstream_pixels(canvas):
            return sum(1 for y in range(canvas.height)
                       for x in range(canvas.width)
                       if canvas.pixel(x, y) == plot.COLOURS[UPSTREAM])
        self.assertIn(colour, bytes(missing.pixels))
        self.assertEqual(upstream_pixels(legend_only),
                         upstream_pixels(missing))

    def test_write_plot_from_results(self):
        path = os.path.join(self.useFixture(fixtures.TempDir()).path,
                            'latency.png')
        canvas = plot.write_plot(path, sample_results(), 'main job')
        with open(path, 'rb') as f:
            width, height, _ = decode_png(f.read())
        self.assertEqual((canvas.width, canvas.height), (width, height))
        # Change to API above, request to API below.
        change = plot.bar_chart(plot.rows_from_results(sample_results()),
                                'main job')
        requests = plot.rows_from_results(sample_results(), field='total')
        self.assertEqual(['boot', 'pause resume'],
                         [label for label, _ in requests])
        self.assertEqual({PLUGIN: (1.5, True), UPSTREAM: (1.2, True)},
                         requests[0][1])
        below = plot.bar_chart(requests, 'request to API',
                               axis_title=plot.REQUEST_TO_API)
        self.assertEqual(change.height + below.height, height)
        self.assertEqual(max(change.width, below.width), width)
        for row in range(below.height):
            line = canvas.pixels[(change.height + row) * width * 3:
                                 (change.height + row + 1) * width * 3]
            self.assertEqual(
                bytes(below.pixels[row * below.width * 3:
                                   (row + 1) * below.width * 3]),
                bytes(line[:below.width * 3]), row)
        rows = plot.rows_from_results(sample_results())
        self.assertEqual(['boot', 'guest poweroff', 'pause resume'],
                         [label for label, _ in rows])
        self.assertEqual({PLUGIN: (0.13, True), UPSTREAM: (None, False)},
                         rows[2][1])


class CliTest(base.TestCase):

    def parse_error(self, argv):
        stderr = self.useFixture(fixtures.StringStream('stderr')).stream
        self.useFixture(fixtures.MonkeyPatch('sys.stderr', stderr))
        exc = self.assertRaises(SystemExit, cli.parse_args, argv)
        self.assertEqual(2, exc.code)
        stderr.seek(0)
        return stderr.read()

    def test_defaults(self):
        options = cli.parse_args([])
        self.assertEqual([PLUGIN, UPSTREAM], options.drivers)
        # The services-only scenarios need tools/services.sh's deployment.
        self.assertEqual([s for s in scenarios.SCENARIOS
                          if not s.services_only], options.selected)
        self.assertEqual('fake', options.libvirt_uri)
        self.assertFalse(options.real)
        self.assertIsNone(options.plot)
        self.assertIsNone(options.json)

    def test_real_hypervisor(self):
        options = cli.parse_args(['--libvirt-uri', 'qemu:///system',
                                  '--guest-dir', '/tmp/guest'])
        self.assertTrue(options.real)
        self.assertEqual('/tmp/guest', options.guest_dir)

    def test_drivers_keep_the_table_order(self):
        options = cli.parse_args(['--drivers', 'upstream, plugin'])
        self.assertEqual([PLUGIN, UPSTREAM], options.drivers)
        self.assertEqual([UPSTREAM],
                         cli.parse_args(['--drivers=upstream']).drivers)

    def test_bad_drivers(self):
        self.assertIn('--drivers', self.parse_error(['--drivers', 'kvm']))
        self.assertIn('nothing', self.parse_error(['--drivers', ',']))

    def test_scenarios_in_catalogue_order(self):
        options = cli.parse_args(['--scenarios', 'soft-reboot,boot'])
        self.assertEqual(['boot', 'soft-reboot'],
                         [s.name for s in options.selected])

    def test_unknown_scenario(self):
        message = self.parse_error(['--scenarios', 'boot,reboot'])
        self.assertIn('unknown scenario(s): reboot', message)

    def test_an_empty_scenario_list_is_refused(self):
        message = self.parse_error(['--scenarios', ''])
        self.assertIn('--scenarios: no scenario named', message)

    def test_a_libvirt_uri_that_is_not_qemus_is_refused(self):
        for uri in ('nonsense', 'xen:///system', 'qemu:/system'):
            message = self.parse_error(['--libvirt-uri', uri])
            self.assertIn("--libvirt-uri: %r is neither" % uri, message)
        for uri in ('qemu:///system', 'qemu+ssh://host/system',
                    'qemu:///session'):
            self.assertTrue(cli.parse_args(['--libvirt-uri', uri]).real)

    def test_check_args_exits_before_loading_nova(self):
        self.assertEqual(0, cli.main(['--check-args', '--scenarios',
                                      'boot']))

    def test_main_job_script_refuses_bad_arguments_before_any_set_up(self):
        script = os.path.join(ROOT, 'tools', 'main-job.sh')
        done = subprocess.run(
            ['bash', script, '--libvirt-uri', 'nonsense'], cwd=ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            universal_newlines=True, timeout=60)
        self.assertEqual(2, done.returncode, done.stdout)
        self.assertIn("--libvirt-uri: 'nonsense' is neither", done.stdout)
        self.assertEqual(1, done.stdout.count('error:'), done.stdout)
        # Nothing was installed or started.
        self.assertNotIn('install-deps', done.stdout)
        self.assertNotIn('FAILED', done.stdout)

    def test_each_run_keeps_its_own_json_and_plot(self):
        self.assertEqual(
            os.path.join('out', 'r-nova34-threading-fake.json'),
            cli.per_run_path(os.path.join('out', 'r.json'), '34',
                             'threading', False))
        self.assertEqual('p-nova33-eventlet-real.png',
                         cli.per_run_path('p.png', '33', 'eventlet', True))

    def test_help_says_how_to_choose_the_mode(self):
        self.assertIn('OS_NOVA_DISABLE_EVENTLET_PATCHING',
                      cli.build_parser().format_help())

    def test_default_paths_are_under_build(self):
        self.assertEqual(
            os.path.join('build', 'mainjob',
                         'latency-nova34-eventlet-fake.png'),
            cli.default_plot_path('34', 'eventlet', False))
        self.assertEqual(
            os.path.join('build', 'mainjob', 'logs-nova33-threading-real'),
            cli.default_log_dir('33', 'threading', True))

    def test_list_scenarios(self):
        out = io.StringIO()
        self.assertEqual(0, cli.main(['--list-scenarios'], stdout=out))
        names = [line.split()[0] for line in out.getvalue().splitlines()]
        self.assertEqual(list(scenarios.NAMES), names)

    def test_default_guest_dir_is_the_test_guests(self):
        self.assertEqual(testguest.DEFAULT_DIR, cli.DEFAULT_GUEST_DIR)

    def test_arguments_are_parsed_without_nova(self):
        # A fresh interpreter, as `python -m mainjob --help` starts: the
        # concurrency mode must not be chosen by an import of the command
        # line (nova_lifecycle.tests, for one, imports Nova).
        code = ('import sys\n'
                'from mainjob import cli\n'
                'cli.parse_args(["--scenarios", "boot"])\n'
                'print(" ".join(sorted(name for name in sys.modules\n'
                '    if name.split(".")[0] in ("nova", "eventlet"))))\n')
        out = subprocess.run([sys.executable, '-c', code], cwd=ROOT,
                             stdout=subprocess.PIPE, check=True,
                             universal_newlines=True).stdout
        self.assertEqual('', out.strip())


class MeasureTest(base.TestCase):

    def test_latency_is_the_largest_step(self):
        m = scenarios.Measure()
        m.step('pause', 10.0, 10.2, 9.9)
        m.step('resume', 20.0, 20.5)
        self.assertAlmostEqual(0.5, m.latency)
        self.assertAlmostEqual(0.3, m.total)
        self.assertEqual([], m.bound_problems())
        m.plugin_bound(latency=0.4, total=0.2)
        problems = m.bound_problems()
        self.assertEqual(2, len(problems))
        self.assertIn('change->API 0.50 s is over', problems[0])

    def test_nothing_measured(self):
        m = scenarios.Measure()
        m.plugin_bound(latency=1.0)
        self.assertIsNone(m.latency)
        self.assertIsNone(m.total)
        self.assertEqual([], m.bound_problems())


class StandInHypervisor:

    def __init__(self):
        self.delete_servers = False
        self.interfered = None

    def interference(self, since):
        return self.interfered


class StandInEnv:
    """What the runner asks of an environment, without Nova."""

    def __init__(self):
        self.settings = {'shutdown_timeout': 3}
        self.hv = StandInHypervisor()
        self.calls = {}
        self.ledger_problems = []
        self.settled = 0
        self.deleted = 0
        self.delete_error = None

    def delete_servers(self):
        self.deleted += 1
        if self.delete_error:
            raise scenarios.ScenarioFailed(self.delete_error)

    def manager_calls(self, uuid):
        return self.calls.get(uuid, 0)

    def plugin_problems(self):
        return list(self.ledger_problems)

    def settle_all(self):
        self.settled += 1
        return True


class StandInDeployment(testtools.TestCase):
    """Runs the body with a :class:`StandInEnv`, as a deployment would."""

    env = None
    setup_error = None

    def __init__(self, driver, body, log_path):
        super().__init__('run_body')
        self._body = body
        self._teardown_problems = []

    def setUp(self):
        super().setUp()
        if self.setup_error:
            raise RuntimeError(self.setup_error)

    def run_body(self):
        self._body(self.env)


def make_scenario(name, run, stops_compute=False):
    return scenarios.Scenario(name, name, run, stops_compute)


class RunnerTest(base.TestCase):

    def setUp(self):
        super().setUp()
        self.env = StandInEnv()
        self.useFixture(fixtures.MonkeyPatch(
            __name__ + '.StandInDeployment.env', self.env))
        self.out = io.StringIO()

    def run_scenarios(self, selected, drivers=(PLUGIN,)):
        found, settings = runner.run(list(drivers), selected,
                                     StandInDeployment,
                                     runner.Progress(self.out))
        return found

    def test_pass_fail_and_errors(self):
        def ok(env, m):
            m.step('x', 1.0, 1.25, 0.5)

        def failing(env, m):
            raise scenarios.ScenarioFailed('the API shows ACTIVE')

        def broken(env, m):
            raise KeyError('oops')

        found = self.run_scenarios([make_scenario('ok', ok),
                                    make_scenario('failing', failing),
                                    make_scenario('broken', broken)])
        self.assertEqual([True, False, False], [r.passed for r in found])
        self.assertAlmostEqual(0.25, found[0].latency)
        self.assertAlmostEqual(0.75, found[0].total)
        self.assertEqual('the API shows ACTIVE', found[1].reason)
        self.assertEqual("KeyError: 'oops'", found[2].reason)
        lines = self.out.getvalue().splitlines()
        words = [line.split()[1:] for line in lines]
        self.assertEqual(1, words.count(['[plugin]', 'ok', 'start']))
        self.assertEqual(1, words.count(['[plugin]', 'failing', 'start']))
        self.assertTrue(any(w[:3] == ['[plugin]', 'failing', 'FAIL:'] and
                            'the API shows ACTIVE' in line
                            for w, line in zip(words, lines)))

    def test_bounds_and_spurious_calls_fail_the_plugin_only(self):
        def slow(env, m):
            m.expect_calls({'id': 'u1'}, 1)
            env.calls['u1'] = 2
            m.step('x', 1.0, 4.0)
            m.plugin_bound(latency=2.0)

        found = self.run_scenarios([make_scenario('slow', slow)],
                                   drivers=(PLUGIN, UPSTREAM))
        plugin, upstream = found
        self.assertEqual((PLUGIN, False, 1), (plugin.driver, plugin.passed,
                                              plugin.spurious))
        self.assertIn('1 spurious', plugin.reason)
        self.assertIn('over the plugin\'s bound', plugin.reason)
        self.assertEqual((UPSTREAM, True, 1), (upstream.driver,
                                               upstream.passed,
                                               upstream.spurious))

    def test_late_calls_revise_the_verdict_before_the_compute_stops(self):
        env = self.env

        def quiet(env, m):
            m.expect_calls({'id': 'u1'}, 0)

        def stop_compute(env, m):
            # A held event was delivered late, before the compute stopped.
            self.assertEqual(1, env.settled)

        real_settle = env.settle_all

        def settle_all():
            env.calls['u1'] = 1
            return real_settle()

        env.settle_all = settle_all
        found = self.run_scenarios([
            make_scenario('quiet', quiet),
            make_scenario('stop', stop_compute, stops_compute=True)])
        self.assertFalse(found[0].passed)
        self.assertEqual(1, found[0].spurious)
        self.assertTrue(found[1].passed, found[1].reason)
        self.assertIn('revised after the held events', self.out.getvalue())

    def test_ledger_problems_fail_the_plugin(self):
        self.env.ledger_problems = ['ledger does not balance']
        found = self.run_scenarios(
            [make_scenario('ok', lambda env, m: None)],
            drivers=(PLUGIN, UPSTREAM))
        self.assertEqual([False, True], [r.passed for r in found])

    def test_real_servers_are_deleted_after_each_scenario(self):
        self.env.hv.delete_servers = True
        self.env.delete_error = None
        found = self.run_scenarios([
            make_scenario('a', lambda env, m: None),
            make_scenario('stop', lambda env, m: None, stops_compute=True)])
        # Not after the scenario that stopped the compute.
        self.assertEqual(1, self.env.deleted)
        self.assertEqual([True, True], [r.passed for r in found])
        self.env.delete_error = 'server still ACTIVE'
        found = self.run_scenarios([make_scenario('b', lambda env, m: None)])
        self.assertFalse(found[0].passed)
        self.assertEqual('deleting its servers failed: server still ACTIVE',
                         found[0].reason)
        self.env.hv.interfered = 'libvirtd was unreachable'
        found = self.run_scenarios([make_scenario('c', lambda env, m: None)])
        self.assertEqual('deleting its servers failed: server still ACTIVE '
                         '(libvirtd was unreachable)', found[0].reason)

    def test_a_failure_names_what_else_touched_the_hypervisor(self):
        self.env.hv.interfered = 'libvirtd was unreachable for 2.0 s'

        def failing(env, m):
            raise scenarios.ScenarioFailed('the API shows ACTIVE')

        found = self.run_scenarios([
            make_scenario('failing', failing),
            make_scenario('ok', lambda env, m: None)])
        self.assertEqual('the API shows ACTIVE (libvirtd was unreachable '
                         'for 2.0 s)', found[0].reason)
        self.assertEqual('', found[1].reason)

    def test_a_deployment_that_does_not_start(self):
        self.useFixture(fixtures.MonkeyPatch(
            __name__ + '.StandInDeployment.setup_error', 'no placement'))
        found = self.run_scenarios(
            [make_scenario('a', lambda env, m: None),
             make_scenario('b', lambda env, m: None)])
        self.assertEqual([False, False], [r.passed for r in found])
        self.assertIn('the deployment failed before it ran', found[0].reason)
        self.assertIn('RuntimeError: no placement', found[0].reason)


class FakeGuestsTest(base.TestCase):
    """The fake guests' ACPI behaviour and their thread."""

    class Domain:
        def __init__(self, uuid):
            self.uuid = uuid
            self._state = fakevirt.RUNNING

        def UUIDString(self):
            return self.uuid

    def setUp(self):
        super().setUp()
        self.useFixture(lc_fixtures.NoThreadLeftBehind())
        self.guests = self.useFixture(fakevirt.FakeGuests())
        self.native = concurrency.native_threading()

    def press(self, uuid):
        """Press the power button; an event set when the guest is off."""
        off = self.native.Event()
        dom = self.Domain(uuid)
        self.guests._press(dom, off.set)
        return dom, off

    def test_a_guest_that_honours_acpi_powers_off_after_a_delay(self):
        pressed = time.monotonic()
        dom, off = self.press('u1')
        self.assertFalse(off.is_set())
        self.assertTrue(off.wait(fakevirt.ACPI_DELAY + 5))
        self.assertGreaterEqual(time.monotonic() - pressed,
                                fakevirt.ACPI_DELAY)
        self.assertEqual({'u1': 1}, self.guests.presses)

    def test_a_guest_that_ignores_acpi_stays_on(self):
        self.guests.register('u2', scenarios.IGNORES_ACPI)
        dom, off = self.press('u2')
        # Something scheduled after the delay runs after it would have.
        later = self.native.Event()
        self.guests.call_later(fakevirt.ACPI_DELAY * 2, later.set)
        self.assertTrue(later.wait(fakevirt.ACPI_DELAY * 2 + 5))
        self.assertFalse(off.is_set())
        self.assertEqual({'u2': 1}, self.guests.presses)

    def test_a_guest_that_is_off_already_is_left_alone(self):
        dom, off = self.press('u3')
        dom._state = fakevirt.SHUTOFF
        later = self.native.Event()
        self.guests.call_later(fakevirt.ACPI_DELAY * 2, later.set)
        self.assertTrue(later.wait(fakevirt.ACPI_DELAY * 2 + 5))
        self.assertFalse(off.is_set())

    def test_failures_are_kept_and_the_thread_goes_on(self):
        def broken():
            raise ValueError('no domain')

        done = self.native.Event()
        self.guests.call_later(0, broken)
        self.guests.call_later(0.01, done.set)
        self.assertTrue(done.wait(5))
        self.assertEqual(['no domain'],
                         [str(e) for e in self.guests.errors])

    def test_the_thread_ends_with_the_fixture(self):
        guests = fakevirt.FakeGuests()
        guests.setUp()
        self.assertEqual(2, concurrency.plugin_threads().count(
            fakevirt.GUEST_THREAD))
        guests.cleanUp()
        # The one left is setUp's fixture's.
        self.assertEqual(1, concurrency.plugin_threads().count(
            fakevirt.GUEST_THREAD))


class DomainWatcherTest(base.TestCase):
    """The real-mode watcher, on libvirt's in-process test driver."""

    URI = 'test:///default'
    UUID = '00000000-0000-0000-0000-00000000a1a1'
    XML = ("<domain type='test'><name>mainjob-watch</name>"
           "<uuid>%s</uuid><memory>65536</memory><vcpu>1</vcpu>"
           "<os><type>hvm</type></os></domain>" % UUID)

    def setUp(self):
        super().setUp()
        self.useFixture(lc_fixtures.NoThreadLeftBehind())
        self.conn = realvirt.libvirt.open(self.URI)
        self.addCleanup(self.conn.close)
        self.addCleanup(self._destroy)
        self.watcher = realvirt.DomainWatcher(self.URI)
        self.addCleanup(self.watcher.stop)
        self.watcher.watch(self.UUID)

    def _destroy(self):
        try:
            self.conn.lookupByUUIDString(self.UUID).destroy()
        except realvirt.libvirt.libvirtError:
            pass

    def wait_first(self, state, after):
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            when = self.watcher.first(self.UUID, state, after)
            if when is not None:
                return when
            time.sleep(0.01)
        self.fail('watcher never saw %s after %s: %s'
                  % (state, after, self.watcher.seen(self.UUID)))

    def test_state_changes_are_timed(self):
        start = time.monotonic()
        # Not there yet: gone, which counts as off.
        self.assertGreaterEqual(self.wait_first('shutoff', start), start)
        dom = self.conn.createXML(self.XML, 0)
        self.assertGreaterEqual(self.wait_first('running', start), start)
        paused = time.monotonic()
        dom.suspend()
        self.assertGreaterEqual(self.wait_first('paused', paused), paused)
        self.assertEqual('paused', self.watcher.state(self.UUID))
        resumed = time.monotonic()
        dom.resume()
        self.assertGreaterEqual(self.wait_first('running', resumed),
                                resumed)
        off = time.monotonic()
        dom.destroy()
        self.assertGreaterEqual(self.wait_first('shutoff', off), off)
        self.assertEqual('gone', self.watcher.state(self.UUID))
        self.assertEqual({self.UUID: 'mainjob-watch'}, self.watcher.names)
        self.assertEqual([], self.watcher.errors)

    def test_a_restart_between_two_reads_is_seen(self):
        # Read by hand: with the thread stopped, nothing reads in between.
        self.assertTrue(self.watcher.stop())
        self.watcher._conn = realvirt.libvirt.open(self.URI)
        self.addCleanup(self.watcher._drop_connection)
        dom = self.conn.createXML(self.XML, 0)
        self.watcher._read(self.UUID)
        restarted = time.monotonic()
        dom.destroy()
        self.conn.createXML(self.XML, 0)
        self.watcher._read(self.UUID)
        self.assertEqual('running', self.watcher.state(self.UUID))
        off = self.watcher.first(self.UUID, 'shutoff', restarted)
        on = self.watcher.first(self.UUID, 'running', restarted)
        self.assertIsNotNone(off)
        self.assertEqual(off, on)

    def test_the_thread_ends_on_stop(self):
        self.assertIn(realvirt.WATCH_THREAD, concurrency.plugin_threads())
        self.assertTrue(self.watcher.stop())
        self.assertNotIn(realvirt.WATCH_THREAD, concurrency.plugin_threads())
