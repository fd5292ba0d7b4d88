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

"""The ``expected-differences`` directive: conformance's list as a table.

Reads ``conformance/expected-differences.yaml`` (the list the conformance
harness checks Nova's test outcomes against) so the docs and the check
cannot disagree.
"""

import os

from docutils import nodes
from docutils.parsers.rst import Directive
import yaml

LIST = os.path.join(os.path.dirname(__file__), '..', '..', '..',
                    'conformance', 'expected-differences.yaml')
COLUMNS = (('Nova test', 3), ('Behaviour', 2), ('Why it differs', 5),
           ('Plugin test of the behaviour', 3))


def _row(cells):
    row = nodes.row()
    for cell in cells:
        entry = nodes.entry()
        entry += cell
        row += entry
    return row


def _text(value):
    return nodes.paragraph(text=' '.join(str(value).split()))


def _literal(value):
    para = nodes.paragraph()
    para += nodes.literal(text=value)
    return para


class ExpectedDifferences(Directive):

    def run(self):
        with open(LIST) as f:
            entries = yaml.safe_load(f) or []
        if not entries:
            return [nodes.paragraph(text='None: every test of the suites '
                                         'below has the same outcome.')]
        table = nodes.table()
        group = nodes.tgroup(cols=len(COLUMNS))
        table += group
        for _name, width in COLUMNS:
            group += nodes.colspec(colwidth=width)
        head = nodes.thead()
        head += _row([_text(name) for name, _width in COLUMNS])
        group += head
        body = nodes.tbody()
        for entry in entries:
            where = []
            if 'nova' in entry:
                where.append('nova %s' % ', '.join(map(str, entry['nova'])))
            if 'modes' in entry:
                where.append(', '.join(entry['modes']))
            why = entry['why'] + (' (%s only)' % '; '.join(where)
                                  if where else '')
            body += _row([_literal(entry['test']), _text(entry['behaviour']),
                          _text(why), _literal(entry['covered_by'])])
        group += body
        return [table]


def setup(app):
    app.add_directive('expected-differences', ExpectedDifferences)
    return {'parallel_read_safe': True}
