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

"""Command line of the main job: ``python -m mainjob``.

Arguments are parsed before Nova is imported, so that ``--help`` and
``--list-scenarios`` need no Nova and Nova's concurrency mode
(``OS_NOVA_DISABLE_EVENTLET_PATCHING``) is applied before anything loads
eventlet. Exit status: 0 when every scenario passed on the plugin, 1 when
one failed (upstream's results never change it), 2 for bad arguments.
"""

import argparse
import contextlib
import io
import os
import re
import sys

from mainjob import results
from mainjob import scenarios

FAKE = 'fake'
ONE_PROCESS = 'one-process'
SERVICES = 'services'
DEPLOYMENTS = (ONE_PROCESS, SERVICES)
# tools/services.sh's state directory (mainjob.services_api.DEFAULT_DIR).
DEFAULT_SERVICES_DIR = '/var/lib/nova-lifecycle-services'
# The libvirt URIs the real mode can use: QEMU's driver, any transport.
QEMU_URI = re.compile(r'^qemu(\+[a-z]+)?://[^\s]*/(system|session)\b')
OUTPUT_DIR = os.path.join('build', 'mainjob')
# nova_lifecycle.tests.testguest.DEFAULT_DIR, spelt out: importing
# nova_lifecycle.tests loads Nova (test_mainjob checks that they agree).
DEFAULT_GUEST_DIR = '/var/cache/nova-lifecycle/guest'
# Seconds one deployment (all scenarios on one driver) may run before
# Nova's harness stops it (OS_TEST_TIMEOUT).
DEPLOYMENT_TIMEOUT = 900


def _csv(value):
    return [item.strip() for item in value.split(',') if item.strip()]


def build_parser():
    parser = argparse.ArgumentParser(
        prog='python -m mainjob',
        description='Single-host Nova in one process (API, conductor, '
                    'scheduler, placement, SQLite) whose compute runs the '
                    'plugin, then upstream\'s libvirt driver; the same '
                    'power-state scenarios through the API on both, one '
                    'table and a PNG plot of the latencies.',
        epilog='Concurrency mode: Nova\'s own switch, the environment '
               'variable OS_NOVA_DISABLE_EVENTLET_PATCHING (true: native '
               'threads, false: eventlet). tools/main-job.sh and tox -e '
               'mainjob-nova3x run both modes, one after the other.')
    parser.add_argument(
        '--deployment', choices=DEPLOYMENTS, default=ONE_PROCESS,
        help='one-process (default): Nova from its functional-test '
             'fixtures in this process; services: the deployment of '
             'tools/services.sh (real services on MariaDB and RabbitMQ, '
             'nova-compute on the real libvirtd), driven through its REST '
             'API with openstacksdk; run with that deployment\'s python '
             '(see doc/source/mainjob.rst)')
    parser.add_argument(
        '--services-dir', metavar='DIR',
        default=os.environ.get('NOVA_LIFECYCLE_SERVICES_DIR',
                               DEFAULT_SERVICES_DIR),
        help='services: the state directory of tools/services.sh '
             '(default: $NOVA_LIFECYCLE_SERVICES_DIR or %s)'
             % DEFAULT_SERVICES_DIR)
    parser.add_argument(
        '--libvirt-uri', default=FAKE, metavar='URI',
        help='"fake" (default): Nova\'s fake libvirt, nothing to install; '
             'qemu:///system: a real libvirtd and QEMU (TCG) booting the '
             'test guest of tools/build-test-guest.sh')
    parser.add_argument(
        '--drivers', type=_csv, default=list(results.DRIVERS),
        metavar='LIST',
        help='comma-separated, from: %s (default: both)'
             % ', '.join(results.DRIVERS))
    parser.add_argument(
        '--scenarios', type=_csv, default=None, metavar='LIST',
        help='comma-separated scenario names (default: all; see '
             '--list-scenarios)')
    parser.add_argument('--list-scenarios', action='store_true',
                        help='print the scenario names and exit')
    parser.add_argument('--check-args', action='store_true',
                        help='check the arguments, then exit (0 when they '
                             'are good, 2 otherwise) without loading Nova')
    parser.add_argument(
        '--plot', metavar='PATH',
        help='PNG file for the latency plot; -nova<N>-<mode>-<fake|real> is '
             'put before its extension, so each run keeps its own '
             '(default: %s/latency-nova<N>-<mode>-<fake|real>.png)'
             % OUTPUT_DIR)
    parser.add_argument('--json', metavar='PATH',
                        help='also write the results as JSON, to PATH with '
                             '-nova<N>-<mode>-<fake|real> before its '
                             'extension')
    parser.add_argument(
        '--log-dir', metavar='DIR',
        help='where Nova\'s log of each deployment goes (default: '
             '%s/logs-nova<N>-<mode>-<fake|real>)' % OUTPUT_DIR)
    parser.add_argument(
        '--guest-dir', metavar='DIR',
        default=os.environ.get('NOVA_LIFECYCLE_GUEST_DIR',
                               DEFAULT_GUEST_DIR),
        help='real mode: the built test guest (default: '
             '$NOVA_LIFECYCLE_GUEST_DIR or %s)' % DEFAULT_GUEST_DIR)
    return parser


def parse_args(argv):
    parser = build_parser()
    options = parser.parse_args(argv)
    unknown = sorted(set(options.drivers) - set(results.DRIVERS))
    if unknown or not options.drivers:
        parser.error('--drivers: choose from %s (got: %s)'
                     % (', '.join(results.DRIVERS),
                        ', '.join(options.drivers) or 'nothing'))
    # Keep the table's order whatever the order given.
    options.drivers = [d for d in results.DRIVERS if d in options.drivers]
    if options.scenarios == []:
        parser.error('--scenarios: no scenario named (leave the option out '
                     'to run them all; names: --list-scenarios)')
    options.services = options.deployment == SERVICES
    try:
        options.selected = scenarios.select(options.scenarios,
                                            options.services)
    except ValueError as exc:
        parser.error('--scenarios: %s' % exc)
    if options.services and options.libvirt_uri != FAKE:
        parser.error('--libvirt-uri: --deployment services uses its '
                     'nova-compute\'s libvirtd (qemu:///system)')
    if options.libvirt_uri != FAKE and not QEMU_URI.match(
            options.libvirt_uri):
        parser.error('--libvirt-uri: %r is neither "fake" nor a libvirt URI '
                     'of QEMU\'s driver such as qemu:///system'
                     % options.libvirt_uri)
    options.real = options.libvirt_uri != FAKE
    options.kind = kind(options.real, options.services)
    return options


def kind(real, services=False):
    """'fake', 'real' or 'services': the last word of a run's files."""
    if services:
        return SERVICES
    return 'real' if real else FAKE


def output_stem(nova_major, mode, real):
    """``real``: a bool (real or fake libvirt) or the kind itself."""
    if not isinstance(real, str):
        real = kind(real)
    return 'nova%s-%s-%s' % (nova_major, mode, real)


def per_run_path(path, nova_major, mode, real):
    """``path`` with ``-nova<N>-<mode>-<fake|real>`` before its extension.

    tox runs the main job once per concurrency mode with the same
    arguments: each run keeps its own file.
    """
    stem, ext = os.path.splitext(path)
    return '%s-%s%s' % (stem, output_stem(nova_major, mode, real), ext)


def default_plot_path(nova_major, mode, real):
    return os.path.join(OUTPUT_DIR, 'latency-%s.png'
                        % output_stem(nova_major, mode, real))


def default_log_dir(nova_major, mode, real):
    return os.path.join(OUTPUT_DIR, 'logs-%s'
                        % output_stem(nova_major, mode, real))


def _nova_version():
    from importlib import metadata
    return metadata.version('nova')


def _quiet_harness():
    """Nova's harness keeps the services' output; a run may take long."""
    os.environ.setdefault('OS_STDOUT_CAPTURE', '1')
    os.environ.setdefault('OS_STDERR_CAPTURE', '1')
    os.environ['OS_TEST_TIMEOUT'] = str(DEPLOYMENT_TIMEOUT)


def _hold_early_log_lines():
    """Keep the log lines of the start-up in memory, off the console."""
    import logging
    from logging import handlers
    early = handlers.MemoryHandler(capacity=100000,
                                   flushLevel=logging.CRITICAL + 1)
    root = logging.getLogger()
    root.addHandler(early)
    root.setLevel(logging.INFO)
    # eventlet's deprecation warning, among others, as log lines.
    logging.captureWarnings(True)
    return early


def _log_to_file(path, early=None, printed=''):
    """Nova's log lines outside a deployment go to a file, not the console.

    Inside a deployment Nova's harness keeps them (saved per driver). What
    was ``printed`` while Nova loaded, and the lines ``early`` held since
    the start, go to the file first.
    """
    import logging
    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    with open(path, 'w') as f:
        f.write(printed)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(
        '%(asctime)s %(levelname)s %(name)s %(message)s'))
    if early is not None:
        early.setTarget(handler)
        early.close()
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def main(argv=None, stdout=None):
    out = stdout or sys.stdout
    options = parse_args(sys.argv[1:] if argv is None else argv)
    if options.check_args:
        return 0
    if options.list_scenarios:
        for scenario in scenarios.SCENARIOS:
            out.write('%-20s %s%s\n' % (
                scenario.name, scenario.title,
                ' (--deployment services only)'
                if scenario.services_only else ''))
        return 0
    if options.services:
        return _main_services(options, out)

    # Until the run's log file is known, keep log lines (Nova's banner
    # about its concurrency mode, its warnings) off the console. Importing
    # Nova's test harness sets up a console handler of its own: whatever
    # it prints while loading goes to the log file too.
    early = _hold_early_log_lines()
    loading = io.StringIO()
    with contextlib.redirect_stdout(loading), \
            contextlib.redirect_stderr(loading):
        from nova_lifecycle import concurrency
        concurrency.patch_nova()
        _quiet_harness()

        from mainjob import deployment
        from mainjob import realvirt
        from mainjob import runner

    if options.real:
        problem = realvirt.problem(options.libvirt_uri, options.guest_dir)
        if problem:
            out.write('main job: cannot use %s: %s\n'
                      % (options.libvirt_uri, problem))
            return 1
        factory = realvirt.deployment_factory(options.libvirt_uri,
                                              options.guest_dir)
    else:
        factory = deployment.FakeDeployment

    mode = 'threading' if concurrency.threading_mode() else 'eventlet'
    info = results.RunInfo(_nova_version(), mode,
                           options.libvirt_uri if options.real else FAKE)
    plot_path, json_path, log_dir = _paths(options, info, mode)
    _log_to_file(os.path.join(log_dir, 'mainjob.log'), early,
                 loading.getvalue())
    progress = runner.Progress(out)
    progress.line('main job: %s; scenarios: %s; drivers: %s' % (
        info.describe(), ', '.join(s.name for s in options.selected),
        ', '.join(options.drivers)))
    all_results, info.settings = runner.run(
        options.drivers, options.selected, factory, progress, log_dir)

    return _report(out, options, info, all_results, plot_path, json_path,
                   log_dir)


def _paths(options, info, mode):
    """The run's plot, JSON (or None) and log directory."""
    stem_kind = options.kind
    plot_path = (per_run_path(options.plot, info.nova_major, mode,
                              stem_kind) if options.plot else
                 default_plot_path(info.nova_major, mode, stem_kind))
    json_path = options.json and per_run_path(options.json, info.nova_major,
                                              mode, stem_kind)
    log_dir = options.log_dir or default_log_dir(info.nova_major, mode,
                                                 stem_kind)
    return plot_path, json_path, log_dir


def _main_services(options, out):
    """--deployment services: see :mod:`mainjob.services`."""
    from mainjob import runner
    from mainjob import services
    from mainjob import services_api

    directory = os.path.realpath(options.services_dir)
    problem = services_api.problem(directory)
    if problem:
        out.write('main job: cannot use the deployment of %s: %s\n'
                  % (directory, problem))
        return 1
    mode = services.concurrency_mode(directory)
    info = results.RunInfo(_nova_version(), mode, 'qemu:///system',
                           deployment=SERVICES)
    plot_path, json_path, log_dir = _paths(options, info, mode)
    _log_to_file(os.path.join(log_dir, 'mainjob.log'))
    api = services_api.Api(directory)
    progress = runner.Progress(out)
    progress.line('main job: %s; scenarios: %s; drivers: %s' % (
        info.describe(), ', '.join(s.name for s in options.selected),
        ', '.join(options.drivers)))
    try:
        all_results, info.settings = runner.run(
            options.drivers, options.selected,
            services.factory(directory, api), progress, log_dir)
    finally:
        restored = services.restore(directory, log_dir, progress)
    status = _report(out, options, info, all_results, plot_path, json_path,
                     log_dir)
    return status if restored else 1


def _report(out, options, info, all_results, plot_path, json_path, log_dir):
    """The table, the plot, the JSON; the exit status."""
    from mainjob import tables
    out.write('\n' + tables.format_table(info, all_results, options.drivers)
              + '\n')
    from mainjob import plot
    os.makedirs(os.path.dirname(plot_path) or '.', exist_ok=True)
    plot.write_plot(plot_path, all_results,
                    'CHANGE TO API LATENCY, %s' % info.describe(),
                    options.drivers)
    out.write('plot: %s\nnova logs: %s\n' % (plot_path, log_dir))
    if results.PLUGIN in options.drivers:
        out.write('plugin metrics (Prometheus textfile, at the last '
                  'compute stop): %s\n' % os.path.join(
                      log_dir, results.METRICS_FILE))
    if json_path:
        os.makedirs(os.path.dirname(json_path) or '.', exist_ok=True)
        with open(json_path, 'w') as f:
            f.write(tables.to_json(info, all_results))
        out.write('json: %s\n' % json_path)
    status = tables.exit_status(all_results)
    out.write('main job: %s\n' % ('PASS' if status == 0 else
                                  'FAIL (a plugin scenario failed)'))
    return status
