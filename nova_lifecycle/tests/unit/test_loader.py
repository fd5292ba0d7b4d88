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

"""Nova can load ``compute_driver = nova_lifecycle.LibvirtLifecycleDriver``.

nova's load_compute_driver() imports ``nova.virt.nova_lifecycle``; that name
exists only through the alias finder which the installed
``nova_lifecycle_virt_alias.pth`` registers at interpreter start-up. So the
real check runs in a fresh interpreter, exactly as a nova service starts:
concurrency.patch_nova() first, then load_compute_driver().
"""

import json
import os
import subprocess
import sys
import sysconfig

import fixtures

from nova_lifecycle import _virt_alias
from nova_lifecycle.tests import base
from nova_lifecycle.virt import host as lifecycle_host

PTH_NAME = 'nova_lifecycle_virt_alias.pth'

# The directory holding the nova_lifecycle under test: a checkout or
# site-packages.
TOP_DIR = os.path.dirname(os.path.dirname(os.path.abspath(
    _virt_alias.__file__)))

LOAD_SCRIPT = r'''
import json
import os
import sys

# What the .pth file did at start-up, before anything else is imported.
at_startup = {
    'finder_installed': any(
        getattr(f, '_nova_lifecycle_virt_alias', False)
        for f in sys.meta_path),
    'heavy_modules': sorted(
        name for name in ('eventlet', 'greenlet', 'nova', 'nova_lifecycle',
                          'oslo_config', 'oslo_log', 'libvirt')
        if name in sys.modules),
}

from nova_lifecycle import concurrency
concurrency.patch_nova()

import importlib

import nova.virt.driver
from nova.virt.libvirt import driver as libvirt_driver
from nova.virt import virtapi

drv = nova.virt.driver.load_compute_driver(
    virtapi.VirtAPI(), 'nova_lifecycle.LibvirtLifecycleDriver')
cls = type(drv)

import nova_lifecycle
import nova_lifecycle.virt.driver

alias_driver_module = importlib.import_module(
    'nova.virt.nova_lifecycle.virt.driver')
missing = {}
for name in ('nova.virt.nova_lifecycle_nonexistent',
             'nova.virt.nova_lifecycle.nonexistent'):
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as exc:
        missing[name] = exc.name
    else:
        missing[name] = None

real = {n: m for n, m in sys.modules.items()
        if n == 'nova_lifecycle' or n.startswith('nova_lifecycle.')}
alias = {n: m for n, m in sys.modules.items()
         if n == 'nova.virt.nova_lifecycle'
         or n.startswith('nova.virt.nova_lifecycle.')}

result = {
    'at_startup': at_startup,
    'module': cls.__module__,
    'qualname': cls.__qualname__,
    'is_libvirt_driver': issubclass(cls, libvirt_driver.LibvirtDriver),
    'is_public_class': cls is nova_lifecycle.LibvirtLifecycleDriver,
    'package_aliased': (sys.modules['nova.virt.nova_lifecycle']
                        is sys.modules['nova_lifecycle']),
    'submodule_aliased': (alias_driver_module
                          is nova_lifecycle.virt.driver),
    # every alias entry is one of the real modules: nothing loaded twice
    'aliases_are_real_modules': all(
        any(m is r for r in real.values()) for m in alias.values()),
    'real_spec_name': nova_lifecycle.__spec__.name,
    'driver_spec_name': nova_lifecycle.virt.driver.__spec__.name,
    'missing': missing,
    'eventlet_patched': not concurrency.threading_mode(),
    # nova 33 imports eventlet even in native threading mode (to poison
    # monkey_patch()), nova 34 refuses the import; so check the patching.
    'thread_patched': ('eventlet' in sys.modules and
                       sys.modules['eventlet'].patcher.is_monkey_patched(
                           'thread')),
}
sys.stdout.write('RESULT ' + json.dumps(result) + '\n')
sys.stdout.flush()
# The driver may own threads; this check is only about loading it.
os._exit(0)
'''


def _site_dirs():
    dirs = list(sysconfig.get_paths()[k] for k in ('purelib', 'platlib'))
    try:
        import site
        dirs.extend(site.getsitepackages())
        dirs.append(site.getusersitepackages())
    except (AttributeError, ImportError):
        pass
    return dirs


def _is_site_dir(path):
    path = os.path.realpath(path)
    return any(os.path.realpath(d) == path for d in _site_dirs())


class TestAliasFinder(base.TestCase):
    """The finder itself, in this process; imports nothing new."""

    def setUp(self):
        super().setUp()
        self.finder = _virt_alias.AliasFinder()

    def test_real_name(self):
        self.assertEqual('nova_lifecycle',
                         _virt_alias.real_name('nova.virt.nova_lifecycle'))
        self.assertEqual(
            'nova_lifecycle.virt.driver',
            _virt_alias.real_name('nova.virt.nova_lifecycle.virt.driver'))
        for name in ('nova', 'nova.virt', 'nova.virt.libvirt',
                     'nova.virt.nova_lifecycle_nonexistent',
                     'nova_lifecycle', 'nova_lifecycle.virt',
                     'other.nova.virt.nova_lifecycle'):
            self.assertIsNone(_virt_alias.real_name(name), name)

    def test_find_spec_ignores_unrelated_names(self):
        for name in ('nova', 'nova.virt', 'nova.virt.libvirt',
                     'nova.virt.libvirt.driver', 'nova.virt.fake',
                     'nova.virt.nova_lifecycle_nonexistent',
                     'nova_lifecycle', 'nova_lifecycle.virt', 'eventlet',
                     'json'):
            self.assertIsNone(self.finder.find_spec(name, None), name)

    def test_find_spec_ignores_missing_modules(self):
        self.assertIsNone(self.finder.find_spec(
            'nova.virt.nova_lifecycle.nonexistent', None))

    def test_find_spec_for_alias_names(self):
        spec = self.finder.find_spec('nova.virt.nova_lifecycle', None)
        self.assertEqual('nova.virt.nova_lifecycle', spec.name)
        self.assertEqual('nova_lifecycle', spec.loader_state['real_name'])
        self.assertEqual(list(sys.modules['nova_lifecycle'].__path__),
                         spec.submodule_search_locations)

    def test_install_is_idempotent(self):
        meta_path = list(sys.meta_path)
        self.addCleanup(sys.meta_path.__setitem__, slice(None), meta_path)
        sys.meta_path[:] = [f for f in meta_path
                            if not getattr(f, _virt_alias._MARKER, False)]
        finder = _virt_alias.install()
        self.assertIs(finder, sys.meta_path[0])
        self.assertIs(finder, _virt_alias.install())
        self.assertEqual(
            1, sum(1 for f in sys.meta_path
                   if getattr(f, _virt_alias._MARKER, False)))

    def test_pth_installed(self):
        """The environment running the tests has the .pth file."""
        found = [d for d in _site_dirs()
                 if os.path.isfile(os.path.join(d, PTH_NAME))]
        self.assertTrue(
            found, '%s is not installed in %s; install nova-lifecycle '
            '("pip install -e .") into the environment running the tests'
            % (PTH_NAME, sorted(set(_site_dirs()))))


class TestLoadComputeDriver(base.TestCase):
    """nova.virt.driver.load_compute_driver() in a fresh interpreter."""

    # base.TestCase applies it with fixtures.Timeout(gentle=True); a fresh
    # interpreter importing all of nova needs more than the default.
    timeout = 120

    def _load(self, disable_eventlet):
        env = {k: v for k, v in os.environ.items()
               if k != 'OS_NOVA_DISABLE_EVENTLET_PATCHING'}
        if disable_eventlet:
            env['OS_NOVA_DISABLE_EVENTLET_PATCHING'] = 'true'
        if not _is_site_dir(TOP_DIR):
            # Testing a checkout: its nova_lifecycle comes first, also for
            # the .pth file, which runs before the script's sys.path[0].
            env['PYTHONPATH'] = os.pathsep.join(
                p for p in (TOP_DIR, env.get('PYTHONPATH')) if p)
        cwd = self.useFixture(fixtures.TempDir()).path
        proc = subprocess.run(
            [sys.executable, '-c', LOAD_SCRIPT], env=env, cwd=cwd,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, universal_newlines=True, timeout=100)
        results = [line[len('RESULT '):] for line in proc.stdout.splitlines()
                   if line.startswith('RESULT ')]
        self.assertEqual(
            (0, 1), (proc.returncode, len(results)),
            'child failed\nstdout:\n%s\nstderr:\n%s'
            % (proc.stdout, proc.stderr))
        loaded = json.loads(results[0])
        loaded['stderr'] = proc.stderr
        return loaded

    def _assert_loaded(self, result):
        self.assertEqual(
            {'finder_installed': True, 'heavy_modules': []},
            result['at_startup'])
        self.assertEqual('nova_lifecycle.virt.driver', result['module'])
        self.assertEqual('LibvirtLifecycleDriver', result['qualname'])
        self.assertTrue(result['is_libvirt_driver'])
        self.assertTrue(result['is_public_class'])
        self.assertTrue(result['package_aliased'])
        self.assertTrue(result['submodule_aliased'])
        self.assertTrue(result['aliases_are_real_modules'])
        self.assertEqual('nova_lifecycle', result['real_spec_name'])
        self.assertEqual('nova_lifecycle.virt.driver',
                         result['driver_spec_name'])
        self.assertEqual(
            {'nova.virt.nova_lifecycle_nonexistent':
                'nova.virt.nova_lifecycle_nonexistent',
             'nova.virt.nova_lifecycle.nonexistent':
                'nova.virt.nova_lifecycle.nonexistent'},
            result['missing'])

    def test_load_eventlet(self):
        result = self._load(disable_eventlet=False)
        self._assert_loaded(result)
        self.assertTrue(result['eventlet_patched'])
        self.assertTrue(result['thread_patched'])

    if lifecycle_host.HOST_HAS_EVENT_HANDLER:
        def test_load_native_threading(self):
            result = self._load(disable_eventlet=True)
            self._assert_loaded(result)
            self.assertFalse(result['eventlet_patched'])
            self.assertFalse(result['thread_patched'])
            self.assertNotIn('eventlet only', result['stderr'])
    else:
        def test_native_threading_is_not_available(self):
            """Nova 31/32: the driver loads, and one line says it cannot."""
            result = self._load(disable_eventlet=True)
            self._assert_loaded(result)
            self.assertFalse(result['eventlet_patched'])
            self.assertEqual(1, result['stderr'].count(
                'runs nova-compute under eventlet only: native threading '
                '(OS_NOVA_DISABLE_EVENTLET_PATCHING=true) is not available '
                'on this release'), result['stderr'])


class SelfcheckModeTest(base.TestCase):
    """The selfcheck reports the concurrency mode nova-compute would use."""

    def selfcheck(self, env_value=None, args=()):
        env = dict(os.environ)
        env.pop('OS_NOVA_DISABLE_EVENTLET_PATCHING', None)
        if env_value is not None:
            env['OS_NOVA_DISABLE_EVENTLET_PATCHING'] = env_value
        done = subprocess.run(
            [sys.executable, '-m', 'nova_lifecycle.cmd.selfcheck'] +
            list(args),
            env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            universal_newlines=True, timeout=120)
        self.assertEqual(0, done.returncode, done.stdout)
        return done.stdout

    def test_nova_computes_default_mode(self):
        from importlib import metadata
        major = int(metadata.version('nova').split('.')[0])
        # nova-compute runs native threads by default from nova 34 on.
        expected = 'threading' if major >= 34 else 'eventlet'
        self.assertIn('concurrency: %s' % expected, self.selfcheck())

    def test_the_environment_still_decides(self):
        self.assertIn('concurrency: eventlet', self.selfcheck('false'))
        threads = self.selfcheck('true')
        self.assertIn('concurrency: threading', threads)
        self.assertEqual(not lifecycle_host.HOST_HAS_EVENT_HANDLER,
                         'not available on this release' in threads)

    def test_the_config_files_backend_is_read(self):
        """nova 34's ``[DEFAULT] concurrency_backend``, from --config-file.

        nova 33 has no such option: its nova-compute runs eventlet unless
        the environment says otherwise, whatever the file.
        """
        from importlib import metadata
        major = int(metadata.version('nova').split('.')[0])
        path = os.path.join(self.useFixture(fixtures.TempDir()).path,
                            'nova.conf')
        for backend in ('eventlet', 'threading'):
            with open(path, 'w') as f:
                f.write('[DEFAULT]\nconcurrency_backend = %s\n' % backend)
            expected = backend if major >= 34 else 'eventlet'
            self.assertIn('concurrency: %s' % expected,
                          self.selfcheck(args=['--config-file', path]))
