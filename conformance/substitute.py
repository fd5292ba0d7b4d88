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

"""Put the plugin where Nova's tests expect upstream's libvirt driver.

Which driver a test process runs is chosen by the environment variable
``NOVA_LIFECYCLE_CONFORMANCE_DRIVER`` (``plugin`` or ``upstream``), read by
:func:`apply` when a suite module is loaded in each stestr worker.
"""

import inspect
import os
import sys
import types

DRIVER_ENV = 'NOVA_LIFECYCLE_CONFORMANCE_DRIVER'
DRIVERS = ('plugin', 'upstream')

UPSTREAM_DRIVER = 'libvirt.LibvirtDriver'
PLUGIN_DRIVER = 'nova_lifecycle.LibvirtLifecycleDriver'


def driver():
    """The driver this process tests: 'plugin' or 'upstream'."""
    chosen = os.environ.get(DRIVER_ENV, 'plugin')
    if chosen not in DRIVERS:
        raise ValueError('%s must be one of %s, not %r'
                         % (DRIVER_ENV, ', '.join(DRIVERS), chosen))
    return chosen


def functional():
    """``compute_driver = libvirt.LibvirtDriver`` loads the plugin.

    Nova's functional libvirt tests set that option; every compute they
    start loads its driver through ``nova.virt.driver.load_compute_driver``,
    which this wraps, as an operator's configuration change would.
    """
    from nova.virt import driver as virt_driver
    load = virt_driver.load_compute_driver

    def load_compute_driver(virtapi, compute_driver=None):
        from nova import conf
        name = compute_driver or conf.CONF.compute_driver
        if name == UPSTREAM_DRIVER:
            name = PLUGIN_DRIVER
        return load(virtapi, name)

    virt_driver.load_compute_driver = load_compute_driver


def unit():
    """``nova.virt.libvirt.driver.LibvirtDriver`` names the plugin's class.

    Nova's unit tests build the driver and patch its methods through that
    name (and ``nova.virt.libvirt.LibvirtDriver``). The class bound to it
    is a subclass of the plugin's that carries upstream's static and class
    methods in its own namespace: patching
    tools (``fixtures.MonkeyPatch``) restore an inherited staticmethod as
    a plain function, which then gets bound to ``self``; that is an
    artefact of rebinding the name, not a difference of the plugin's.
    """
    from nova.virt import libvirt as libvirt_package
    from nova.virt.libvirt import driver as libvirt_driver

    from nova_lifecycle.virt import driver as lc_driver

    upstream = libvirt_driver.LibvirtDriver
    _keep_explicit_super(upstream, libvirt_driver)
    namespace = {'__module__': upstream.__module__,
                 '__qualname__': upstream.__qualname__}
    for klass in reversed(inspect.getmro(upstream)):
        for name, value in vars(klass).items():
            if isinstance(value, (staticmethod, classmethod)):
                namespace[name] = value
    for name, value in vars(lc_driver.LibvirtLifecycleDriver).items():
        if isinstance(value, (staticmethod, classmethod)):
            namespace[name] = value
    bound = type(upstream.__name__, (lc_driver.LibvirtLifecycleDriver,),
                 namespace)
    libvirt_driver.LibvirtDriver = bound
    # The package re-exports the class; tests patch through both names. A
    # patch of an inherited method through one name, once undone, leaves
    # the method in that class's own namespace, where a patch through the
    # other name would no longer reach it: one class under both names.
    libvirt_package.LibvirtDriver = bound


# The module global that upstream's rewritten methods read instead of
# ``LibvirtDriver`` (see _keep_explicit_super).
UPSTREAM_CLASS_GLOBAL = '_nova_lifecycle_upstream_LibvirtDriver'


def _keep_explicit_super(upstream, module):
    """``super(LibvirtDriver, self)`` keeps meaning upstream's parent.

    Nova 31 and 32's ``LibvirtDriver.__init__`` calls
    ``super(LibvirtDriver, self).__init__``, reading the module global that
    :func:`unit` rebinds to a subclass of the plugin: the call would come
    back to the plugin's ``__init__`` for ever. Such methods read the same
    class through a global of their own; everything else they read stays
    the module's, so the tests' patches still reach them.
    """
    name = upstream.__name__
    setattr(module, UPSTREAM_CLASS_GLOBAL, upstream)
    for attr, value in list(vars(upstream).items()):
        code = getattr(value, '__code__', None)
        if code is None or not {'super', name} <= set(code.co_names):
            continue
        names = tuple(UPSTREAM_CLASS_GLOBAL if n == name else n
                      for n in code.co_names)
        rewritten = types.FunctionType(
            code.replace(co_names=names), value.__globals__, value.__name__,
            value.__defaults__, value.__closure__)
        rewritten.__kwdefaults__ = value.__kwdefaults__
        rewritten.__qualname__ = value.__qualname__
        rewritten.__doc__ = value.__doc__
        rewritten.__dict__.update(value.__dict__)
        setattr(upstream, attr, rewritten)


def compute():
    """Compute managers get the plugin's hooks, as after ``init_host``.

    The plugin hooks the manager that registers with its driver; Nova's
    manager unit tests run a fake driver and no ``init_host``, so every
    manager they build is hooked when built. The fake driver takes no bulk
    snapshot, so the hooked sync reads each instance on its own.
    """
    from nova.compute import manager as compute_manager

    from nova_lifecycle.compute import hooks

    init = compute_manager.ComputeManager.__init__

    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        manager_hooks = hooks.ManagerHooks(lambda: None)
        manager_hooks.attach(self.handle_events)

    compute_manager.ComputeManager.__init__ = __init__


def installed_wheel():
    """Nova's tests, as run from the installed wheel (both drivers).

    Nova's test configuration looks for ``etc/nova/api-paste.ini`` beside
    the ``nova`` package, where a source checkout has it; the wheel
    installs it under the environment's prefix.
    """
    from nova.tests.fixtures import conf as conf_fixture

    paste = None
    for prefix in (sys.prefix, sys.base_prefix):
        path = os.path.join(prefix, 'etc', 'nova', 'api-paste.ini')
        if os.path.exists(path):
            paste = path
            break
    if paste is None:
        return
    set_up = conf_fixture.ConfFixture.setUp

    def setUp(self):
        set_up(self)
        self.conf.set_default('api_paste_config', paste, group='wsgi')

    conf_fixture.ConfFixture.setUp = setUp


def apply(suite):
    """Put the plugin in place for ``suite`` when this process tests it."""
    installed_wheel()
    if driver() == 'plugin':
        {'functional': functional, 'unit': unit,
         'compute': compute}[suite]()
