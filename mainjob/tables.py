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

"""The main job's table, its JSON form and its exit status."""

import json

from mainjob import results as results_mod

LATENCY_HELP = (
    'change->API: from the hypervisor change (the domain\'s new state) to '
    'the API showing it; request->API: from the API request; spurious: '
    'stop()/force_stop() calls of the compute manager that the scenario '
    'did not call for.')


def seconds(value):
    """'1.23 s', or '-' for no value."""
    return '-' if value is None else '%.2f s' % value


def by_scenario(results):
    """{scenario: {driver: Result}}, scenarios in the order first seen."""
    rows = {}
    for result in results:
        rows.setdefault(result.scenario, {})[result.driver] = result
    return rows


def _cells(result):
    if result is None:
        return ['not run', '', '', '']
    return ['pass' if result.passed else 'FAIL', seconds(result.latency),
            seconds(result.total), str(result.spurious)]


def format_table(info, results, drivers=results_mod.DRIVERS):
    """The table, one row per scenario, one column group per driver."""
    rows = by_scenario(results)
    sub = ['result', 'change->API', 'request->API', 'spurious']
    header = ['scenario']
    for driver in drivers:
        header += ['%s: %s' % (driver, name) if i == 0 else name
                   for i, name in enumerate(sub)]
    body = []
    for scenario, per_driver in rows.items():
        title = next(iter(per_driver.values())).title
        line = [title]
        for driver in drivers:
            line += _cells(per_driver.get(driver))
        body.append(line)
    widths = [max(len(row[i]) for row in [header] + body)
              for i in range(len(header))]

    def render(row):
        cells = [row[0].ljust(widths[0])]
        cells += [cell.rjust(widths[i]) if i % len(sub) != 1
                  else cell.ljust(widths[i])
                  for i, cell in enumerate(row) if i > 0]
        groups = [cells[0]]
        for start in range(1, len(cells), len(sub)):
            groups.append('  '.join(cells[start:start + len(sub)]))
        return ' | '.join(groups).rstrip()

    lines = ['Main job: %s' % info.describe()]
    if info.settings:
        # None: the release has no such option.
        lines.append('settings: ' + ', '.join(
            '%s=%s' % item for item in sorted(info.settings.items())
            if item[1] is not None))
    lines.append('')
    lines.append(render(header))
    lines.append('-' * len(render(header)))
    lines.extend(render(row) for row in body)
    lines.append('')
    lines.append(LATENCY_HELP)
    notes = format_notes(results)
    if notes:
        lines.append('')
        lines.extend(notes)
    return '\n'.join(lines)


def format_notes(results):
    """Why each failure failed, and the steps of multi-step scenarios."""
    notes = []
    for result in results:
        if not result.passed:
            notes.append('%s / %s: FAIL: %s'
                         % (result.driver, result.title, result.reason))
        elif result.reason:
            notes.append('%s / %s: %s'
                         % (result.driver, result.title, result.reason))
        if len(result.steps) > 1:
            notes.append('%s / %s: steps: %s' % (
                result.driver, result.title,
                ', '.join('%s %s' % (label, seconds(value))
                          for label, value in result.steps)))
    return notes


def to_json(info, results):
    return json.dumps({'run': info.as_dict(),
                       'results': [r.as_dict() for r in results]},
                      indent=2, sort_keys=True)


def exit_status(results):
    """1 when a plugin scenario failed; upstream's results never fail it."""
    return 1 if results_mod.failed(results, results_mod.PLUGIN) else 0
