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

"""Runs the scenarios on each driver, one deployment per driver.

Progress goes to the stream given (one line when a scenario starts, one
when it ends); the results come back as
:class:`~mainjob.results.Result` objects. A scenario's
verdict is given when it ends and revised before the compute stops, once
every event still held was handled: a stop() call that a late STOPPED
event caused is then counted too.
"""

import os
import time
import traceback

from mainjob import results
from mainjob import scenarios as scenarios_mod
from nova_lifecycle import concurrency


class Progress:
    """One line per step, with the seconds since the start, flushed."""

    def __init__(self, stream):
        self._stream = stream
        self._start = time.monotonic()

    def line(self, text):
        self._stream.write('%6.1fs %s\n'
                           % (time.monotonic() - self._start, text))
        self._stream.flush()


def _new_outcome(case):
    """What the case reports to: its own, or a testtools result.

    The services deployment has its own (no Nova test code there).
    """
    new = getattr(case, 'new_outcome', None)
    if new is not None:
        return new()
    import testtools
    return testtools.TestResult()


def _last_line(text):
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else text


class DriverRun:
    """The scenarios on one driver, in one deployment."""

    def __init__(self, driver, selected, deployment_factory, progress,
                 log_dir):
        self.driver = driver
        self.selected = selected
        self._factory = deployment_factory
        self._progress = progress
        self._log_dir = log_dir
        self.results = []
        self.settings = {}
        self._open = []        # (Result, Measure) not final yet
        self._tracebacks = []
        self._started = None   # when the current scenario started
        self._body_done = None  # when the scenarios ended

    def _say(self, scenario, text):
        self._progress.line('[%s] %-20s %s' % (self.driver, scenario, text))

    def run(self):
        log_path = None
        if self._log_dir:
            log_path = os.path.join(self._log_dir, '%s.log' % self.driver)
        self._progress.line('[%s] starting Nova (%s)' % (
            self.driver, results.COMPUTE_DRIVERS[self.driver]))
        threads_before = set(concurrency.plugin_threads())
        case = self._factory(self.driver, self._body, log_path)
        outcome = _new_outcome(case)
        self._body_done = None
        case.run(outcome)
        if self._body_done is not None:
            # Each service's stop runs the manager's graceful shutdown
            # (nova 33 sleeps manager_shutdown_timeout in each).
            self._progress.line('[%s] Nova stopped in %.1f s' % (
                self.driver, time.monotonic() - self._body_done))
        problems = list(case._teardown_problems)
        left = sorted(set(concurrency.plugin_threads()) - threads_before)
        if left:
            problems.append('threads left after the deployment stopped: %s'
                            % ', '.join(left))
        for _, text in outcome.errors + outcome.failures:
            self._tracebacks.append(text)
            problems.append(_last_line(text))
        ran = {r.scenario for r in self.results}
        missing = [s for s in self.selected if s.name not in ran]
        for scenario in missing:
            reason = ('the deployment failed before it ran: %s'
                      % ('; '.join(problems) or 'no error recorded'))
            self.results.append(results.Result(
                scenario.name, scenario.title, self.driver, False, reason))
            self._say(scenario.name, 'FAIL: %s' % reason)
        if problems and not missing:
            reason = '; '.join(problems)
            self.results.append(results.Result(
                'teardown', 'compute stop and teardown', self.driver, False,
                reason))
            self._progress.line('[%s] teardown: FAIL: %s'
                                % (self.driver, reason))
        self._write_tracebacks()
        return self.results

    def _write_tracebacks(self):
        if not (self._tracebacks and self._log_dir):
            return
        os.makedirs(self._log_dir, exist_ok=True)
        path = os.path.join(self._log_dir, '%s-errors.txt' % self.driver)
        with open(path, 'w') as f:
            f.write('\n\n'.join(self._tracebacks))
        self._progress.line('[%s] tracebacks in %s' % (self.driver, path))

    def _body(self, env):
        self.settings = dict(env.settings)
        for scenario in self.selected:
            if scenario.stops_compute:
                self._finalise(env)
            self._run_one(env, scenario)
            if env.hv.delete_servers and not scenario.stops_compute:
                # Real guests cost CPU, memory and the host's VCPUs: once
                # every held event was handled, delete them.
                self._finalise(env)
                self._delete_servers(env)
        self._finalise(env)
        self._progress.line('[%s] stopping Nova (every service)'
                            % self.driver)
        self._body_done = time.monotonic()

    def _delete_servers(self, env):
        result = self.results[-1]
        try:
            env.delete_servers()
        except scenarios_mod.ScenarioFailed as exc:
            problem = 'deleting its servers failed: %s' % exc
            interference = env.hv.interference(self._started)
            if interference:
                problem = '%s (%s)' % (problem, interference)
            result.passed = False
            result.reason = '; '.join(filter(None, [result.reason, problem]))
            self._say(result.scenario, 'FAIL: ' + problem)

    def _run_one(self, env, scenario):
        self._say(scenario.name, 'start')
        measure = scenarios_mod.Measure()
        started = self._started = time.monotonic()
        error = None
        try:
            scenario.run(env, measure)
        except scenarios_mod.ScenarioFailed as exc:
            error = str(exc)
        except Exception as exc:
            self._tracebacks.append('%s (%s):\n%s' % (
                scenario.name, self.driver, traceback.format_exc()))
            error = '%s: %s' % (type(exc).__name__, exc)
        result = results.Result(
            scenario.name, scenario.title, self.driver, False,
            latency=measure.latency, total=measure.total,
            steps=[(label, latency) for label, latency, _ in measure.steps],
            seconds=time.monotonic() - started)
        if error is not None:
            interference = env.hv.interference(started)
            if interference:
                error = '%s (%s)' % (error, interference)
        measure.error = error
        self._judge(env, result, measure)
        self.results.append(result)
        self._open.append((result, measure))
        self._say(scenario.name, self._summary(result))

    def _judge(self, env, result, measure):
        result.spurious = sum(
            max(0, env.manager_calls(uuid) - expected)
            for uuid, expected in measure.expected.items())
        problems = [measure.error] if measure.error else []
        if self.driver == results.PLUGIN:
            if result.spurious:
                problems.append('%d spurious stop()/force_stop() call(s)'
                                % result.spurious)
            problems.extend(measure.bound_problems())
            problems.extend(env.plugin_problems())
        result.passed = not problems
        result.reason = '; '.join(problems or measure.notes)

    @staticmethod
    def _summary(result):
        text = 'pass' if result.passed else 'FAIL: %s' % result.reason
        if result.latency is not None:
            text += ', change->API %.2f s' % result.latency
        if result.total is not None:
            text += ', request->API %.2f s' % result.total
        return '%s (%.1f s)' % (text, result.seconds)

    def _finalise(self, env):
        """Once every held event was handled, count late calls too."""
        if not self._open:
            return
        if not env.settle_all():
            self._progress.line('[%s] events still held after waiting; '
                                'counting the calls made so far'
                                % self.driver)
        for result, measure in self._open:
            before = (result.passed, result.spurious)
            self._judge(env, result, measure)
            if (result.passed, result.spurious) != before:
                self._say(result.scenario, 'revised after the held events: '
                          + self._summary(result))
        self._open = []


def run(drivers, selected, deployment_factory, progress, log_dir=None):
    """Run ``selected`` on each driver; all results and the settings."""
    all_results = []
    settings = {}
    for driver in drivers:
        run = DriverRun(driver, selected, deployment_factory, progress,
                        log_dir)
        all_results.extend(run.run())
        settings = settings or run.settings
    return all_results, settings
