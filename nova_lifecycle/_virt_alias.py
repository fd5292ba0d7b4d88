#    Licensed under the Apache License, Version 2.0 (the "License"); you may
#    not use this file except in compliance with the License. You may obtain
#    a copy of the License at
#
#         http://www.apache.org/licenses/LICENSE-2.0
#
#    Unless required by applicable law or agreed to in writing, software
#    distributed under the License is distributed on an "AS IS" BASIS, WITHOUT
#    WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied. See the
#    License for the specific language governing permissions and limitations
#    under the License.

"""Make ``nova.virt.nova_lifecycle`` an alias of the nova_lifecycle package.

Nova's ``load_compute_driver()`` always imports ``'nova.virt.' +
compute_driver``, so ``compute_driver = nova_lifecycle.LibvirtLifecycleDriver``
makes it import ``nova.virt.nova_lifecycle``. ``AliasFinder`` answers for that
name and every name below it with the module already imported under the real
name, so both names refer to the very same module objects and nothing is added
to nova's tree.

The ``nova_lifecycle_virt_alias.pth`` file installed into site-packages runs
this file at every interpreter start-up, without importing the nova_lifecycle
package (start-up must not depend on what the package imports), and calls
``install()``. Hence this module must stay cheap: standard library only,
nothing imported at module level but ``sys``, and no work until an alias name
is actually imported.
"""

import sys

PACKAGE = 'nova_lifecycle'
ALIAS = 'nova.virt.' + PACKAGE

# Set on the finder so that install() recognises one that was registered by
# another copy of this module (the .pth loads its own copy at start-up).
_MARKER = '_nova_lifecycle_virt_alias'


def real_name(fullname):
    """Return the ``nova_lifecycle...`` name for an alias name, else None."""
    if fullname == ALIAS or fullname.startswith(ALIAS + '.'):
        return PACKAGE + fullname[len(ALIAS):]
    return None


class AliasLoader:
    """Hand out the module already imported under its real name."""

    def create_module(self, spec):
        import importlib

        state = spec.loader_state
        module = importlib.import_module(state['real_name'])
        state['real_spec'] = module.__spec__
        return module

    def exec_module(self, module):
        # The import system has just set module.__spec__ to the alias spec;
        # give the module its own spec back (reload(), pickling and friends
        # rely on it). Nothing else was overwritten: the other attributes are
        # only set when missing.
        alias_spec = module.__spec__
        module.__spec__ = alias_spec.loader_state['real_spec']


class AliasFinder:
    """Meta path finder for ``nova.virt.nova_lifecycle[.*]`` and nothing else.

    find_spec() runs under the global import lock, so it only checks that the
    real module exists; the real import happens in the loader.
    """

    _nova_lifecycle_virt_alias = True

    def find_spec(self, fullname, path=None, target=None):
        name = real_name(fullname)
        if name is None:
            return None
        import importlib.machinery
        import importlib.util

        try:
            real_spec = (sys.modules[name].__spec__ if name in sys.modules
                         else importlib.util.find_spec(name))
        except (ImportError, ValueError, AttributeError):
            return None
        if real_spec is None:
            return None
        spec = importlib.machinery.ModuleSpec(
            fullname, AliasLoader(), origin=real_spec.origin,
            loader_state={'real_name': name},
            is_package=real_spec.submodule_search_locations is not None)
        if spec.submodule_search_locations is not None:
            spec.submodule_search_locations = list(
                real_spec.submodule_search_locations)
        return spec

    def __repr__(self):
        return '<%s for %r>' % (type(self).__name__, ALIAS)


def installed_finder():
    """Return the registered AliasFinder (from any copy of this module)."""
    for finder in sys.meta_path:
        if getattr(finder, _MARKER, False):
            return finder
    return None


def install():
    """Register the finder once, in front of the path based finders.

    It has to come before ``PathFinder``: nova_lifecycle's ``__path__`` is
    also the alias package's ``__path__``, so ``PathFinder`` would otherwise
    load ``nova.virt.nova_lifecycle.virt`` a second time as a new module.
    Never raises: it runs from a .pth file at interpreter start-up.
    """
    try:
        finder = installed_finder()
        if finder is None:
            finder = AliasFinder()
            sys.meta_path.insert(0, finder)
        return finder
    except Exception:
        return None
