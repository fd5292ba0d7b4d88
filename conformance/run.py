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

"""Run one suite of Nova's tests on the plugin and compare with upstream.

    python -m conformance.run {functional,unit,compute}...
        [--modes threading,eventlet] [--filter REGEX] [--concurrency N]
        [--baseline {recorded,run,record}]

Upstream's outcomes come from ``baseline/nova-<version>-<suite>-<mode>.txt``
(upstream's driver in the same virtualenv, recorded with ``--baseline
record``); when the installed Nova has none yet, upstream's side runs here
first and its file is written for the developer to commit. Every test whose
outcome on the plugin differs from upstream's must be listed in
``expected-differences.yaml`` with the behaviour it exercises; any other
difference, and any listed one that no longer differs, fails the run.
Each suite runs in each of ``--modes`` (Nova's concurrency modes, set
through ``OS_NOVA_DISABLE_EVENTLET_PATCHING``); ``--filter`` runs a sample.
"""

import argparse
import collections
import importlib.metadata
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import subunit
import testtools
import yaml

from conformance import substitute

HERE = os.path.dirname(os.path.abspath(__file__))
TOP = os.path.dirname(HERE)
BASELINES = os.path.join(HERE, 'baseline')
EXPECTED = os.path.join(HERE, 'expected-differences.yaml')
BUILD = os.path.join(TOP, 'build', 'conformance')
SUITES = ('functional', 'unit', 'compute')
# What a test can end as, in the baseline files and the report.
PASSED, FAILED, SKIPPED, MISSING = 'passed', 'failed', 'skipped', 'missing'
_STATUS = {'success': PASSED, 'xfail': PASSED, 'fail': FAILED,
           'uxsuccess': FAILED, 'skip': SKIPPED}


def nova_release():
    return importlib.metadata.version('nova')


MODES = ('threading', 'eventlet')


def default_modes(suite, release):
    """The modes a suite runs in unless told.

    Nova's functional harness once, in nova-compute's default mode:
    threading on nova 34, eventlet on nova 33. The unit modules in both
    modes, but on nova 33 (native threading is experimental there) in
    eventlet only. On nova 33 upstream's driver itself fails most of the
    functional package in threading mode (HTTP 500 from the API) and one
    of the libvirt driver's unit tests (``CacheConcurrencyTestCase``)
    hangs in it. Nova 31 and 32 run nova-compute under eventlet only:
    every suite runs in eventlet there.
    """
    major = int(release.split('.')[0])
    if major < 33:
        return ('eventlet',)
    before_34 = major < 34
    if suite == 'functional':
        return ('eventlet',) if before_34 else ('threading',)
    if suite == 'unit' and before_34:
        return ('eventlet',)
    return MODES


def mode_environment(mode):
    """OS_NOVA_DISABLE_EVENTLET_PATCHING for one of :data:`MODES`."""
    return 'true' if mode == 'threading' else 'false'


def baseline_path(suite, release, mode):
    name = 'nova-%s-%s-%s.txt' % (release, suite, mode)
    return os.path.join(BASELINES, name)


def read_outcomes(path):
    """{test id: outcome} of a baseline file ('outcome test-id' lines)."""
    outcomes = {}
    with open(path) as f:
        for line in f:
            if line.strip() and not line.startswith('#'):
                outcome, test_id = line.split()
                outcomes[test_id] = outcome
    return outcomes


def write_outcomes(path, outcomes, header):
    with open(path, 'w') as f:
        f.write('# %s\n' % header)
        for test_id in sorted(outcomes):
            f.write('%s %s\n' % (outcomes[test_id], test_id))


def parse_subunit(path):
    """{test id: (outcome, traceback text)} of a subunit v2 stream."""
    found = {}

    def on_test(test):
        outcome = _STATUS.get(test['status'])
        if outcome is None:
            return
        details = test['details']
        text = ''
        for name in ('traceback', 'reason'):
            if name in details:
                text = details[name].as_text()
                break
        found[test['id']] = (outcome, text)

    with open(path, 'rb') as stream:
        case = subunit.ByteStreamToStreamResult(stream)
        result = testtools.StreamToDict(on_test)
        result.startTestRun()
        case.run(result)
        result.stopTestRun()
    return found


def run_suite(suite, mode, driver, concurrency, tag, test_filter=None,
              only=None, timeout=None):
    """Run the suite with one driver; {test id: (outcome, traceback)}.

    ``only``: the test ids to run again (in the repository of the run
    before). A run still going after ``timeout`` seconds is killed (a test
    that hangs); the tests it finished count, the others are missing.
    """
    repo = os.path.join(BUILD, '%s-%s' % (tag, driver))
    if only is None:
        shutil.rmtree(repo, ignore_errors=True)
        os.makedirs(repo)
    # stestr keeps its repository in the directory it runs from.
    stestr = [sys.executable, '-m', 'stestr', '--test-path',
              os.path.join(HERE, 'suites', suite), '--top-dir', TOP]
    env = dict(os.environ)
    env[substitute.DRIVER_ENV] = driver
    env['OS_NOVA_DISABLE_EVENTLET_PATCHING'] = mode_environment(mode)
    env.setdefault('OS_TEST_TIMEOUT', '160')
    for name in ('OS_STDOUT_CAPTURE', 'OS_STDERR_CAPTURE', 'OS_LOG_CAPTURE'):
        env.setdefault(name, '1')
    stream = repo + ('.rerun' if only else '') + '.subunit'
    selection = [test_filter] if test_filter else []
    if only:
        listed = repo + '.rerun.txt'
        with open(listed, 'w') as f:
            f.write(''.join(test_id + '\n' for test_id in only))
        selection = ['--load-list', listed]
    started = time.monotonic()
    with open(stream, 'wb') as out:
        process = subprocess.Popen(
            stestr + ['run', '--subunit', '--concurrency', str(concurrency)]
            + selection, cwd=repo, env=env, stdout=out,
            start_new_session=True)
        try:
            rc = process.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            rc = 'killed after %d s' % timeout
    found = parse_subunit(stream)
    print('conformance: %s, %s, on %s: %d tests in %.0f s (stestr exit %s)'
          % (suite, mode, driver, len(found), time.monotonic() - started,
             rc), flush=True)
    if not found:
        raise SystemExit('conformance: no test of %s ran on %s; see %s'
                         % (suite, driver, stream))
    return found


def load_expected(suite, release, mode):
    """{test id: entry} of the expected differences that apply here."""
    with open(EXPECTED) as f:
        entries = yaml.safe_load(f) or []
    expected = {}
    major = release.split('.')[0]
    for entry in entries:
        for key in ('test', 'suite', 'behaviour', 'covered_by'):
            if not entry.get(key):
                raise SystemExit('conformance: %s: entry %r lacks %r'
                                 % (EXPECTED, entry, key))
        if entry['suite'] != suite:
            continue
        if 'nova' in entry and int(major) not in entry['nova']:
            continue
        if 'modes' in entry and mode not in entry['modes']:
            continue
        expected[entry['test']] = entry
    return expected


def counts(outcomes):
    tally = collections.Counter(outcomes.values())
    return ', '.join('%d %s' % (tally[k], k)
                     for k in (PASSED, FAILED, SKIPPED) if tally[k])


def compare(upstream, plugin, expected):
    """(unexpected, expected-and-seen, stale) test ids."""
    differing = sorted(
        test_id for test_id in set(upstream) | set(plugin)
        if upstream.get(test_id, MISSING) != plugin.get(test_id, MISSING))
    unexpected = [t for t in differing if t not in expected]
    seen = [t for t in differing if t in expected]
    stale = sorted(t for t in expected if t not in differing)
    return unexpected, seen, stale


def check(suite, mode, args):
    """Run one suite in one mode; True when it shows no unexpected change."""
    release = nova_release()
    tag = 'nova-%s-%s-%s' % (release, suite, mode)
    path = baseline_path(suite, release, mode)
    started = time.monotonic()
    if args.baseline == 'recorded' and os.path.exists(path):
        upstream = read_outcomes(path)
    else:
        ran = run_suite(suite, mode, 'upstream', args.concurrency, tag,
                        args.filter, timeout=args.timeout)
        upstream = {t: outcome for t, (outcome, _) in ran.items()}
        if args.baseline != 'run':
            recorded = upstream
            command = ('python -m conformance.run %s --modes %s --baseline '
                       'record' % (suite, mode))
            if args.filter:
                # A sample adds to (or starts) the file of its suite.
                recorded = dict(read_outcomes(path)
                                if os.path.exists(path) else {})
                recorded.update(upstream)
                command += " --filter '%s'" % args.filter
            write_outcomes(path, recorded, "upstream's LibvirtDriver, nova "
                           "%s, %s mode: %s" % (release, mode, command))
            print('conformance: wrote %s; commit it' % path)
    plugin_run = run_suite(suite, mode, 'plugin', args.concurrency, tag,
                           args.filter, timeout=args.timeout)
    plugin = {t: outcome for t, (outcome, _) in plugin_run.items()}
    if args.filter:
        chosen = re.compile(args.filter)
        upstream = {t: o for t, o in upstream.items() if chosen.search(t)}
    if not upstream:
        raise SystemExit('conformance: %s has no test of this run; record '
                         'them with --baseline record' % path)
    expected = load_expected(suite, release, mode)
    if args.filter:
        expected = {t: e for t, e in expected.items() if t in upstream}
    unexpected, seen, stale = compare(upstream, plugin, expected)
    # A test can fail now and then on a loaded machine: what upstream passed
    # and the plugin failed runs once more, and is reported either way.
    again = [t for t in unexpected
             if (upstream.get(t), plugin.get(t)) == (PASSED, FAILED)]
    flaky = []
    if again:
        rerun = run_suite(suite, mode, 'plugin', args.concurrency, tag,
                          only=again, timeout=args.timeout)
        flaky = sorted(t for t in again
                       if rerun.get(t, (None,))[0] == PASSED)
        for test_id in flaky:
            plugin[test_id] = PASSED
        unexpected, seen, stale = compare(upstream, plugin, expected)
    report = os.path.join(BUILD, tag + '.report.txt')
    with open(report, 'w') as f:
        for test_id in unexpected:
            f.write('== %s: upstream %s, plugin %s\n%s\n' % (
                test_id, upstream.get(test_id, MISSING),
                plugin.get(test_id, MISSING),
                plugin_run.get(test_id, ('', ''))[1]))
    print('conformance: nova %s, %s, %s%s: upstream %s; plugin %s; '
          'differences: %d expected, %d unexpected, %d listed but gone '
          '(%.0f s)' % (release, suite, mode,
                        ' (%s)' % args.filter if args.filter else '',
                        counts(upstream), counts(plugin), len(seen),
                        len(unexpected), len(stale),
                        time.monotonic() - started), flush=True)
    for test_id in unexpected:
        print('conformance: unexpected difference: %s (upstream %s, plugin '
              '%s)' % (test_id, upstream.get(test_id, MISSING),
                       plugin.get(test_id, MISSING)))
    for test_id in flaky:
        print('conformance: failed on the plugin, passed when run again: '
              '%s' % test_id)
    for test_id in stale:
        print('conformance: listed in expected-differences.yaml but no '
              'longer differs: %s' % test_id)
    if unexpected:
        print('conformance: tracebacks in %s' % report)
    return not (unexpected or stale)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('suites', nargs='+', choices=SUITES)
    parser.add_argument(
        '--modes', type=lambda value: value.split(','),
        help='comma-separated, of %s (default: see default_modes)'
             % ', '.join(MODES))
    parser.add_argument('--filter', help='only the test ids this regular '
                        'expression finds (a sample)')
    parser.add_argument('--concurrency', type=int, default=2)
    parser.add_argument('--timeout', type=int, default=3600,
                        help='seconds one run of a suite may take')
    parser.add_argument(
        '--baseline', choices=('recorded', 'run', 'record'),
        default='recorded',
        help="upstream's outcomes: the recorded file (run and written when "
             "there is none), run now, or run now and written")
    args = parser.parse_args(argv)
    for mode in args.modes or ():
        if mode not in MODES:
            parser.error('unknown mode %r' % mode)
    ok = True
    for suite in args.suites:
        for mode in args.modes or default_modes(suite, nova_release()):
            ok = check(suite, mode, args) and ok
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
