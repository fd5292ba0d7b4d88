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

"""pbr based setup, plus shipping nova_lifecycle_virt_alias.pth.

The .pth file has to land at the top of site-packages, both from a wheel
(``pip install .``) and from a PEP 660 editable wheel (``pip install -e .``);
see nova_lifecycle/_virt_alias.py for why it exists. pbr replaces the
``cmdclass`` given to setup() with its own, so the two commands below are
added by a Distribution subclass after pbr has run.
"""

import os

import setuptools
from setuptools.command import build_py
from setuptools import dist

try:
    from setuptools.command import editable_wheel
except ImportError:  # setuptools < 64: no PEP 660 editable installs
    editable_wheel = None

PTH_NAME = 'nova_lifecycle_virt_alias.pth'
PTH_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                          PTH_NAME)


class BuildPyWithPth(build_py.build_py):
    """build_py that also puts the .pth file at the top of build_lib."""

    def run(self):
        super().run()
        if not self.editable_mode:
            self.copy_file(PTH_SOURCE, os.path.join(self.build_lib, PTH_NAME))

    def get_outputs(self, include_bytecode=1):
        outputs = super().get_outputs(include_bytecode)
        if not self.editable_mode:
            outputs.append(os.path.join(self.build_lib, PTH_NAME))
        return outputs


class _StrategyWithPth:
    """Wrap an editable_wheel strategy; also write the .pth into the wheel."""

    def __init__(self, strategy):
        self._strategy = strategy

    def __enter__(self):
        self._strategy.__enter__()
        return self

    def __exit__(self, *exc_info):
        return self._strategy.__exit__(*exc_info)

    def __call__(self, wheel, files, mapping):
        self._strategy(wheel, files, mapping)
        with open(PTH_SOURCE, 'rb') as pth:
            wheel.writestr(PTH_NAME, pth.read())


CMDCLASS = {'build_py': BuildPyWithPth}

if editable_wheel is not None:
    class EditableWheelWithPth(editable_wheel.editable_wheel):
        """editable_wheel whose wheel also carries the .pth file.

        Whatever strategy setuptools picks (a path entry, a meta path finder
        or a link tree) only makes the package importable; the .pth file has
        to be added at the top of the editable wheel separately.
        """

        def _select_strategy(self, *args, **kwargs):
            return _StrategyWithPth(
                super()._select_strategy(*args, **kwargs))

    CMDCLASS['editable_wheel'] = EditableWheelWithPth


class Distribution(dist.Distribution):
    def finalize_options(self):
        super().finalize_options()  # runs pbr, which resets self.cmdclass
        self.cmdclass.update(CMDCLASS)


setuptools.setup(
    setup_requires=['pbr>=2.0.0'],
    pbr=True,
    distclass=Distribution)
