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

"""The installed package holds only what runs in nova-compute.

``nova_lifecycle/``, its ``tests/`` aside, is the runtime: it must not
import test code (Nova's or its own) or the main job (``mainjob/``, in the
checkout only). ``nova_lifecycle/common/`` is the generic part: the
standard library, oslo.log and eventlet, nothing of Nova or of the rest of
the plugin. Modules are read with ``ast``, not imported, so an import
inside a function or under a condition counts too.
"""

import ast
import os
import sys

import nova_lifecycle
from nova_lifecycle.tests import base

PACKAGE = os.path.dirname(os.path.abspath(nova_lifecycle.__file__))
# Folders of PACKAGE: the tests (not part of the runtime), the generic part.
TESTS = 'tests'
COMMON = 'common'

# Test code and the main job: never imported by the runtime. nova.test is
# Nova's test base class (testtools, fixtures), as test-only as nova.tests.
RUNTIME_FORBIDDEN = ('nova.tests', 'nova.test', 'nova_lifecycle.tests',
                     'mainjob')
# What nova_lifecycle/common/ may import besides the standard library.
COMMON_ALLOWED = ('oslo_log', 'eventlet')


def module_name(relpath):
    """'virt/driver.py' -> 'nova_lifecycle.virt.driver'."""
    parts = relpath[:-len('.py')].split(os.sep)
    if parts[-1] == '__init__':
        parts.pop()
    return '.'.join(['nova_lifecycle'] + parts)


def runtime_modules():
    """{relative path: module name} of nova_lifecycle/ but its tests/."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(PACKAGE):
        rel_dir = os.path.relpath(dirpath, PACKAGE)
        dirnames[:] = sorted(
            d for d in dirnames if d != '__pycache__' and
            not (rel_dir == os.curdir and d == TESTS))
        for filename in sorted(filenames):
            if filename.endswith('.py'):
                relpath = os.path.normpath(os.path.join(rel_dir, filename))
                found[relpath] = module_name(relpath)
    return found


def _resolve(module, level, importer, is_package):
    """The absolute name of ``from <level dots><module> import ...``."""
    if not level:
        return module
    # A package's __init__ is the package itself; a module is in one.
    package = importer.split('.')[:None if is_package else -1]
    package = package[:len(package) - (level - 1)]
    return '.'.join(package + ([module] if module else []))


def imports(source, importer, filename='<source>'):
    """(line, [names], statement) of every import in ``source``, by line.

    ``import a.b, c`` gives one entry per module; ``from a.b import c, d``
    gives ``['a.b', 'a.b.c', 'a.b.d']`` (``c`` and ``d`` may be modules);
    ``importlib.import_module('x')`` and ``__import__('x')`` with a literal
    name give ``['x']``.
    """
    is_package = os.path.basename(filename) == '__init__.py'
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, [alias.name], ast.unparse(node))
                         for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = _resolve(node.module, node.level, importer, is_package)
            found.append((node.lineno, [module] + [
                '%s.%s' % (module, alias.name)
                for alias in node.names if alias.name != '*'],
                ast.unparse(node)))
        elif (isinstance(node, ast.Call) and node.args and
              isinstance(node.args[0], ast.Constant) and
              isinstance(node.args[0].value, str) and
              _dynamic_import(node.func)):
            found.append((node.lineno, [node.args[0].value],
                          ast.unparse(node)))
    return sorted(found)


def _dynamic_import(func):
    if isinstance(func, ast.Name):
        return func.id in ('__import__', 'import_module')
    return isinstance(func, ast.Attribute) and func.attr == 'import_module'


def _problems(path, source, importer, bad):
    """'path:line imports name (statement)' for each name ``bad`` refuses.

    Of ``from a import b``, ``a`` if it is refused, else each refused
    ``a.b``.
    """
    problems = []
    for line, names, statement in imports(source, importer, path):
        refused = names[:1] if bad(names[0]) else [
            name for name in names[1:] if bad(name)]
        problems.extend('%s:%d imports %s (%s)' % (path, line, name,
                                                   statement)
                        for name in refused)
    return problems


def runtime_problems(path, source, importer):
    return _problems(path, source, importer, lambda name: any(
        name == p or name.startswith(p + '.') for p in RUNTIME_FORBIDDEN))


def common_problems(path, source, importer):
    def bad(name):
        top = name.split('.')[0]
        return not (top in sys.stdlib_module_names or top in COMMON_ALLOWED)
    return _problems(path, source, importer, bad)


def read(relpath):
    with open(os.path.join(PACKAGE, relpath), encoding='utf-8') as f:
        return f.read()


class RuntimePackageTest(base.TestCase):

    def test_the_walk_sees_the_runtime_and_not_the_tests(self):
        modules = runtime_modules()
        self.assertIn(os.path.join('virt', 'driver.py'), modules)
        self.assertEqual('nova_lifecycle.virt.driver',
                         modules[os.path.join('virt', 'driver.py')])
        self.assertEqual('nova_lifecycle', modules['__init__.py'])
        self.assertIn(os.path.join(COMMON, 'ledger.py'), modules)
        self.assertFalse([path for path in modules
                          if path.split(os.sep)[0] == TESTS])

    def test_runtime_imports_no_test_code_and_no_main_job(self):
        problems = []
        for relpath, name in runtime_modules().items():
            problems.extend(runtime_problems(
                'nova_lifecycle/' + relpath.replace(os.sep, '/'),
                read(relpath), name))
        self.assertEqual(
            [], problems,
            'the installed package (nova_lifecycle/ but its tests/) must '
            'not import %s:\n%s'
            % (', '.join(RUNTIME_FORBIDDEN), '\n'.join(problems)))

    def test_common_imports_only_the_standard_library_oslo_log_eventlet(self):
        problems = []
        for relpath, name in runtime_modules().items():
            if relpath.split(os.sep)[0] != COMMON:
                continue
            problems.extend(common_problems(
                'nova_lifecycle/' + relpath.replace(os.sep, '/'),
                read(relpath), name))
        self.assertEqual(
            [], problems,
            'nova_lifecycle/common/ may import only the standard library, '
            '%s:\n%s' % (', '.join(COMMON_ALLOWED), '\n'.join(problems)))


class ImportScanTest(base.TestCase):
    """The scan itself, on a made-up nova_lifecycle/common/inbox.py."""

    PATH = 'nova_lifecycle/common/inbox.py'
    NAME = 'nova_lifecycle.common.inbox'
    SOURCE = '\n'.join([
        'import os.path',
        'from nova import tests',
        'from nova.tests.fixtures import libvirt as fakelibvirt',
        'from oslo_log import log as logging',
        'def later():',
        '    import mainjob.cli',
        '    from .. import tests',
        '    from . import ledger',
        '    return importlib.import_module("nova_lifecycle.tests.base")',
        'if False:',
        '    __import__("nova.test")',
    ])

    def lines(self, problems):
        """{line: name} of 'path:line imports name (statement)'."""
        found = {}
        for problem in problems:
            where, _, rest = problem.partition(' imports ')
            path, _, line = where.rpartition(':')
            self.assertEqual(self.PATH, path)
            found.setdefault(int(line), []).append(rest.split(' (')[0])
        return found

    def test_every_form_of_import_is_seen(self):
        names = [name for _, found, _ in imports(
            self.SOURCE, self.NAME, self.PATH) for name in found]
        for name in ('os.path', 'nova.tests', 'nova.tests.fixtures.libvirt',
                     'oslo_log.log', 'mainjob.cli', 'nova_lifecycle.tests',
                     'nova_lifecycle.common.ledger',
                     'nova_lifecycle.tests.base', 'nova.test'):
            self.assertIn(name, names)

    def test_runtime_offenders_are_named_with_their_line(self):
        problems = runtime_problems(self.PATH, self.SOURCE, self.NAME)
        self.assertEqual({2: ['nova.tests'], 3: ['nova.tests.fixtures'],
                          6: ['mainjob.cli'], 7: ['nova_lifecycle.tests'],
                          9: ['nova_lifecycle.tests.base'], 11: ['nova.test']},
                         self.lines(problems))
        self.assertIn(self.PATH + ':7 imports nova_lifecycle.tests '
                      '(from .. import tests)', problems)

    def test_common_may_not_reach_nova_or_the_plugin(self):
        problems = common_problems(self.PATH, self.SOURCE, self.NAME)
        self.assertEqual({2: ['nova'], 3: ['nova.tests.fixtures'],
                          6: ['mainjob.cli'], 7: ['nova_lifecycle'],
                          8: ['nova_lifecycle.common'],
                          9: ['nova_lifecycle.tests.base'], 11: ['nova.test']},
                         self.lines(problems))
        self.assertIn(self.PATH + ':8 imports nova_lifecycle.common '
                      '(from . import ledger)', problems)

    def test_a_package_init_resolves_relative_imports_in_itself(self):
        self.assertEqual(
            [(1, ['nova_lifecycle.common', 'nova_lifecycle.common.ledger'],
              'from . import ledger')],
            imports('from . import ledger', 'nova_lifecycle.common',
                    'nova_lifecycle/common/__init__.py'))
