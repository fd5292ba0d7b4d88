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


"""Nova's test modules, loaded for stestr with the chosen driver in place.

Nova's test packages choose the concurrency mode first
(``OS_NOVA_DISABLE_EVENTLET_PATCHING``); so does this one, before anything
imports Nova.
"""

from nova_lifecycle import concurrency

concurrency.patch_nova()

import importlib  # noqa: E402
import pkgutil  # noqa: E402
import re  # noqa: E402
import unittest  # noqa: E402

from conformance import substitute  # noqa: E402


def package_modules(package):
    """The ``test_*`` modules of a Nova test package, sorted."""
    found = importlib.import_module(package)
    return sorted('%s.%s' % (package, info.name)
                  for info in pkgutil.iter_modules(found.__path__)
                  if info.name.startswith('test_'))


def _select(suite, pattern):
    selected = unittest.TestSuite()
    for test in suite:
        if isinstance(test, unittest.TestSuite):
            selected.addTests(_select(test, pattern))
        elif pattern.search(test.id().rsplit('.', 1)[-1]):
            selected.addTest(test)
    return selected


def load(loader, suite, modules, test_name_pattern=None):
    """The tests of ``modules`` with the driver of this process in place.

    ``test_name_pattern``, a regular expression, keeps only the test
    methods whose name it finds.
    """
    importlib.import_module(modules[0].rsplit('.', 1)[0])
    substitute.apply(suite)
    tests = unittest.TestSuite(
        loader.loadTestsFromModule(importlib.import_module(name))
        for name in modules)
    if test_name_pattern is not None:
        tests = _select(tests, re.compile(test_name_pattern))
    return tests
