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

"""devstack/plugin.sh, run with bash through devstack's phases.

devstack itself is not here: a small stub defines the devstack functions
plugin.sh calls (iniset, iniget and inidelete edit real ini files through
Python's configparser; setup_develop, pip_uninstall, async_wait and die
record their calls) and a driver script plays stack.sh, unstack.sh and
clean.sh in devstack's order:

- stack.sh sources devstack/settings, then runs the phases pre-install,
  install, post-config and, once nova is started, extra and test-config;
- configure_nova (before the install phase) writes
  ``compute_driver = libvirt.LibvirtDriver`` into $NOVA_CONF;
- start_nova_compute (after the post-config phase and local.conf's
  post-config merge, before extra) builds $NOVA_CPU_CONF by copying
  $NOVA_CONF, then merges local.conf's [[post-config|$NOVA_CPU_CONF]];
  nova-compute reads that file.

The assertions are on the resulting ini files and the recorded calls.
"""

import configparser
import os
import stat
import subprocess
import sys

import fixtures
from oslo_config import cfg

from nova_lifecycle import conf as lifecycle_conf
from nova_lifecycle.tests import base

TOP_DIR = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.dirname(os.path.abspath(__file__)))))
PLUGIN_SH = os.path.join(TOP_DIR, 'devstack', 'plugin.sh')
SETTINGS = os.path.join(TOP_DIR, 'devstack', 'settings')
DRIVER = 'nova_lifecycle.LibvirtLifecycleDriver'
UPSTREAM_DRIVER = 'libvirt.LibvirtDriver'

# Edits one ini file the way devstack's iniset/iniget/inidelete do.
INI_TOOL = r'''
import configparser
import os
import sys

command, path, section, option = sys.argv[1:5]
parser = configparser.ConfigParser(interpolation=None, strict=True,
                                   default_section='devstack-stub-none')
parser.optionxform = str
parser.read(path)
if command == 'get':
    if parser.has_option(section, option):
        print(parser.get(section, option))
    sys.exit(0)
if command == 'set':
    if not parser.has_section(section):
        parser.add_section(section)
    parser.set(section, option, sys.argv[5])
elif command == 'delete':
    if not parser.has_option(section, option):
        sys.exit(0)
    parser.remove_option(section, option)
with open(path, 'w') as ini:
    parser.write(ini)
'''

# The devstack functions plugin.sh and settings use.
STUB = r'''
function _record {
    printf '%s\n' "$*" >> "$CALLS"
}
function die {
    local line=$1
    shift
    _record "die $*"
    echo "[ERROR] line $line: $*" >&2
    exit 1
}
function echo_summary {
    echo "$@"
}
function is_service_enabled {
    local service
    for service in "$@"; do
        if [[ ,$ENABLED_SERVICES, =~ ,$service, ]]; then
            return 0
        fi
    done
    return 1
}
function trueorfalse {
    local testval=${!2:-}
    case "$testval" in
        1|[yY]es|YES|[tT]rue|TRUE) echo True ;;
        0|[nN]o|NO|[fF]alse|FALSE) echo False ;;
        *) echo "$1" ;;
    esac
}
function define_plugin {
    _record "define_plugin $*"
}
function setup_develop {
    _record "setup_develop $*"
}
function pip_uninstall {
    _record "pip_uninstall $*"
}
function async_wait {
    _record "async_wait $*"
}
function iniset {
    if [[ $1 == -sudo ]]; then
        shift
    fi
    _record "iniset $*"
    "$STUB_PYTHON" "$INI_TOOL" set "$@"
}
function iniget {
    "$STUB_PYTHON" "$INI_TOOL" get "$@"
}
function inidelete {
    if [[ $1 == -sudo ]]; then
        shift
    fi
    _record "inidelete $*"
    "$STUB_PYTHON" "$INI_TOOL" delete "$@"
}
'''

# What stack.sh, unstack.sh and clean.sh share: functions, lib/nova's
# variables, the plugin's clone, its settings.
PROLOGUE = r'''
set -o errexit
set -o nounset
source "$STUB"
NOVA_CONF=$NOVA_CONF_DIR/nova.conf
NOVA_CPU_CONF=$NOVA_CONF_DIR/nova-cpu.conf
declare -A -g GITDIR
GITDIR[nova-lifecycle]=$PLUGIN_DIR
function run_plugin {
    source "$PLUGIN_DIR/devstack/plugin.sh" "$@"
}
source "$PLUGIN_DIR/devstack/settings"
'''

STACK = PROLOGUE + r'''
run_plugin stack pre-install
# configure_nova: create_nova_conf and hypervisor-libvirt's settings.
rm -f $NOVA_CONF
iniset $NOVA_CONF DEFAULT debug True
iniset $NOVA_CONF libvirt virt_type qemu
iniset $NOVA_CONF DEFAULT compute_driver libvirt.LibvirtDriver
run_plugin stack install
run_plugin stack post-config
# merge_config_group local.conf post-config ($NOVA_CONF sections).
eval "$LOCAL_CONF_NOVA_CONF"
# start_nova_compute: nova-compute reads the copy.
cp $NOVA_CONF $NOVA_CPU_CONF
eval "$LOCAL_CONF_NOVA_CPU_CONF"
inidelete $NOVA_CPU_CONF database connection
run_plugin stack extra
run_plugin stack test-config
'''

UNSTACK = PROLOGUE + r'''
run_plugin unstack
'''

CLEAN = PROLOGUE + r'''
run_plugin clean
'''

# Stands in for $PYTHON: records how it was called.
FAKE_PYTHON = '''#!/bin/sh
echo "python $*" >> "$CALLS"
exit "${FAKE_PYTHON_EXIT:-0}"
'''


def read_ini(path):
    parser = configparser.ConfigParser(interpolation=None, strict=True,
                                       default_section='devstack-stub-none')
    parser.optionxform = str
    with open(path) as ini:
        parser.read_file(ini)
    return parser


def lifecycle_options(path):
    parser = read_ini(path)
    if not parser.has_section('lifecycle'):
        return {}
    return dict(parser.items('lifecycle'))


def variable(opt):
    return 'NOVA_LIFECYCLE_' + opt.dest.upper()


def other_value(opt):
    """A valid value, not the default, as a local.conf would spell it."""
    if isinstance(opt, cfg.BoolOpt):
        return str(not opt.default)
    if isinstance(opt, cfg.FloatOpt):
        return str(opt.default + 1.5)
    if isinstance(opt, cfg.IntOpt):
        return str(opt.default + 1)
    if isinstance(opt, cfg.StrOpt) and opt.dest.endswith('_textfile'):
        return '/var/lib/node_exporter/textfile/%s.prom' % opt.dest
    raise AssertionError('no test value for %s option %s' % (
        type(opt).__name__, opt.dest))


class DevstackPluginTest(base.TestCase):

    def setUp(self):
        super().setUp()
        self.assertTrue(os.path.isfile(PLUGIN_SH), PLUGIN_SH)
        self.tmp = self.useFixture(fixtures.TempDir()).path
        self.conf_dir = os.path.join(self.tmp, 'etc', 'nova')
        os.makedirs(self.conf_dir)
        self.nova_conf = os.path.join(self.conf_dir, 'nova.conf')
        self.cpu_conf = os.path.join(self.conf_dir, 'nova-cpu.conf')
        self.calls_file = os.path.join(self.tmp, 'calls')
        open(self.calls_file, 'w').close()
        self.files = {}
        for name, text in (('stub.sh', STUB), ('ini_tool.py', INI_TOOL),
                           ('stack.sh', STACK), ('unstack.sh', UNSTACK),
                           ('clean.sh', CLEAN), ('python', FAKE_PYTHON)):
            path = os.path.join(self.tmp, name)
            with open(path, 'w') as f:
                f.write(text)
            self.files[name] = path
        os.chmod(self.files['python'], stat.S_IRWXU)
        # What devstack, stackrc and local.conf provide.
        self.env = {key: value for key, value in os.environ.items()
                    if not key.startswith('NOVA_LIFECYCLE_')}
        self.env.update({
            'CALLS': self.calls_file,
            'STUB': self.files['stub.sh'],
            'STUB_PYTHON': sys.executable,
            'INI_TOOL': self.files['ini_tool.py'],
            'PLUGIN_DIR': TOP_DIR,
            'NOVA_CONF_DIR': self.conf_dir,
            'DEST': self.tmp,
            'VIRT_DRIVER': 'libvirt',
            'ENABLED_SERVICES': 'mysql,rabbit,n-api,n-cond,n-sch,n-cpu,'
                                'placement-api,q-svc',
            'GLOBAL_VENV': 'True',
            'PYTHON': self.files['python'],
            'LOCAL_CONF_NOVA_CONF': '',
            'LOCAL_CONF_NOVA_CPU_CONF': '',
        })

    # Helpers

    def run_script(self, name, **env):
        self.env.update(env)
        return subprocess.run(['bash', self.files[name]], env=self.env,
                              capture_output=True, text=True, timeout=50)

    def stack(self, **env):
        result = self.run_script('stack.sh', **env)
        self.assertEqual(0, result.returncode, result.stderr[-3000:])
        return result

    def stack_fails(self, **env):
        result = self.run_script('stack.sh', **env)
        self.assertNotEqual(0, result.returncode, result.stdout[-2000:])
        return result

    def calls(self):
        with open(self.calls_file) as f:
            return f.read().splitlines()

    def clear_calls(self):
        open(self.calls_file, 'w').close()

    def driver_in(self, path):
        return read_ini(path).get('DEFAULT', 'compute_driver')

    def file_bytes(self):
        found = {}
        for path in (self.nova_conf, self.cpu_conf):
            with open(path, 'rb') as f:
                found[path] = f.read()
        return found

    # stack.sh

    def test_settings_name_the_plugin_after_the_package(self):
        self.stack()
        self.assertIn('define_plugin nova-lifecycle', self.calls())
        setup_cfg = configparser.ConfigParser()
        setup_cfg.read(os.path.join(TOP_DIR, 'setup.cfg'))
        self.assertEqual('nova-lifecycle', setup_cfg['metadata']['name'])

    def test_stack_sets_the_driver_in_the_file_nova_compute_reads(self):
        self.stack()
        self.assertEqual(DRIVER, self.driver_in(self.cpu_conf))
        # $NOVA_CONF is where it comes from; the rest of it stays.
        self.assertEqual(DRIVER, self.driver_in(self.nova_conf))
        self.assertEqual('qemu',
                         read_ini(self.cpu_conf).get('libvirt', 'virt_type'))
        # No variable set: no option written, the plugin's defaults hold.
        self.assertEqual({}, lifecycle_options(self.cpu_conf))
        calls = self.calls()
        self.assertEqual(['setup_develop %s' % TOP_DIR],
                         [c for c in calls if c.startswith('setup_develop')])
        # configure_neutron_nova, which edits $NOVA_CONF in the background,
        # is collected before the plugin writes to that file.
        set_driver = 'iniset %s DEFAULT compute_driver %s' % (
            self.nova_conf, DRIVER)
        self.assertLess(calls.index('async_wait configure_neutron_nova'),
                        calls.index(set_driver))
        self.assertIn('python -m nova_lifecycle.cmd.selfcheck '
                      '--config-file %s' % self.cpu_conf, calls)
        self.assertFalse([c for c in calls if c.startswith('die')])

    def test_every_lifecycle_option_reaches_nova_cpu_conf(self):
        wanted = {opt.dest: other_value(opt)
                  for opt in lifecycle_conf.lifecycle_opts}
        self.stack(**{variable(opt): wanted[opt.dest]
                      for opt in lifecycle_conf.lifecycle_opts})
        self.assertEqual(wanted, lifecycle_options(self.cpu_conf))
        # And oslo.config reads them back with the options' own types.
        conf = cfg.ConfigOpts()
        lifecycle_conf.register_opts(conf)
        conf(['--config-file', self.cpu_conf], project='nova-lifecycle-test')
        for opt in lifecycle_conf.lifecycle_opts:
            self.assertEqual(wanted[opt.dest],
                             str(getattr(conf.lifecycle, opt.dest)))

    def test_only_the_options_set_are_written(self):
        self.stack(NOVA_LIFECYCLE_STOPPED_EVENT_DELAY='5',
                   NOVA_LIFECYCLE_DISPATCH_WORKERS='',
                   NOVA_LIFECYCLE_FAST_STOPPED_EVENTS='no')
        self.assertEqual({'stopped_event_delay': '5',
                          'fast_stopped_events': 'False'},
                         lifecycle_options(self.cpu_conf))

    def test_malformed_values_fail_before_anything_is_written(self):
        malformed = (('DISPATCH_WORKERS', 'eight'),
                     ('STOPPED_EVENT_DELAY', '-1'),
                     ('STOPPED_EVENT_GRACE', '2s'),
                     ('FAST_STOPPED_EVENTS', 'maybe'),
                     ('METRICS_TEXTFILE', 'relative/x.prom'))
        for name, value in malformed:
            self.clear_calls()
            env = {'NOVA_LIFECYCLE_' + other: '' for other, _ in malformed}
            env['NOVA_LIFECYCLE_' + name] = value
            result = self.stack_fails(**env)
            self.assertIn("NOVA_LIFECYCLE_%s='%s'" % (name, value),
                          result.stderr)
            self.assertEqual(UPSTREAM_DRIVER, self.driver_in(self.nova_conf))
            self.assertFalse(os.path.exists(self.cpu_conf))

    def test_another_virt_driver_fails_at_the_first_phase(self):
        result = self.stack_fails(VIRT_DRIVER='fake')
        self.assertIn('needs VIRT_DRIVER=libvirt', result.stderr)
        self.assertIn('VIRT_DRIVER=fake', result.stderr)
        calls = self.calls()
        self.assertFalse([c for c in calls if c.startswith(
            ('setup_develop', 'iniset'))], calls)

    def test_a_node_without_nova_compute_is_left_alone(self):
        self.stack(ENABLED_SERVICES='mysql,rabbit,n-api,n-cond,n-sch',
                   VIRT_DRIVER='fake')
        self.assertEqual(UPSTREAM_DRIVER, self.driver_in(self.cpu_conf))
        calls = self.calls()
        self.assertFalse([c for c in calls if c.startswith(
            ('setup_develop', 'async_wait', 'python', 'die')) or
            DRIVER in c or ' lifecycle ' in c], calls)

    def test_local_conf_overriding_the_driver_fails_the_extra_phase(self):
        result = self.stack_fails(
            LOCAL_CONF_NOVA_CPU_CONF='iniset $NOVA_CPU_CONF DEFAULT '
                                     'compute_driver libvirt.LibvirtDriver')
        self.assertIn("compute_driver is 'libvirt.LibvirtDriver'",
                      result.stderr)
        self.assertIn('post-config', result.stderr)
        self.assertNotIn('selfcheck', '\n'.join(self.calls()))

    def test_local_conf_contradicting_an_option_fails_the_extra_phase(self):
        result = self.stack_fails(
            NOVA_LIFECYCLE_STOPPED_EVENT_DELAY='5',
            LOCAL_CONF_NOVA_CPU_CONF='iniset $NOVA_CPU_CONF lifecycle '
                                     'stopped_event_delay 7')
        self.assertIn("[lifecycle] stopped_event_delay is '7'",
                      result.stderr)

    def test_local_conf_may_set_an_option_the_variables_leave_out(self):
        self.stack(LOCAL_CONF_NOVA_CPU_CONF='iniset $NOVA_CPU_CONF lifecycle '
                                            'dispatch_workers 4')
        self.assertEqual({'dispatch_workers': '4'},
                         lifecycle_options(self.cpu_conf))

    def test_a_failing_selfcheck_fails_the_stack(self):
        result = self.stack_fails(FAKE_PYTHON_EXIT='1')
        self.assertIn('does not load with %s' % self.cpu_conf, result.stderr)

    def test_selfcheck_can_be_turned_off(self):
        self.stack(NOVA_LIFECYCLE_SELFCHECK='False', FAKE_PYTHON_EXIT='1')
        self.assertNotIn('selfcheck', '\n'.join(self.calls()))

    def test_selfcheck_loads_the_driver_with_real_nova(self):
        result = self.stack(PYTHON=sys.executable,
                            NOVA_LIFECYCLE_STOPPED_EVENT_GRACE='3.5')
        self.assertIn('loaded: nova_lifecycle.virt.driver.'
                      'LibvirtLifecycleDriver', result.stdout)
        self.assertIn('stopped_event_grace = 3.5', result.stdout)
        # Out of the option's range: only oslo.config knows, and says so.
        result = self.stack_fails(PYTHON=sys.executable,
                                  NOVA_LIFECYCLE_STOPPED_EVENT_GRACE='20')
        self.assertIn('does not load with %s' % self.cpu_conf, result.stderr)
        self.assertIn('stopped_event_grace', result.stderr)

    # unstack.sh and clean.sh

    def test_unstack_changes_nothing(self):
        self.stack(NOVA_LIFECYCLE_DISPATCH_WORKERS='8')
        before = self.file_bytes()
        self.clear_calls()
        result = self.run_script('unstack.sh')
        self.assertEqual(0, result.returncode, result.stderr[-3000:])
        self.assertEqual(before, self.file_bytes())
        self.assertEqual(['define_plugin nova-lifecycle'], self.calls())

    def test_clean_leaves_no_reference_to_the_plugin(self):
        self.stack(NOVA_LIFECYCLE_DISPATCH_WORKERS='8',
                   NOVA_LIFECYCLE_STOPPED_EVENT_GRACE='1')
        self.clear_calls()
        result = self.run_script('clean.sh', GLOBAL_VENV='False')
        self.assertEqual(0, result.returncode, result.stderr[-3000:])
        for path in (self.nova_conf, self.cpu_conf):
            self.assertEqual(UPSTREAM_DRIVER, self.driver_in(path))
            self.assertEqual({}, lifecycle_options(path))
            self.assertEqual('qemu',
                             read_ini(path).get('libvirt', 'virt_type'))
        self.assertIn('pip_uninstall nova-lifecycle', self.calls())

    def test_clean_keeps_the_global_venv_for_clean_sh(self):
        self.stack()
        self.clear_calls()
        result = self.run_script('clean.sh', GLOBAL_VENV='True')
        self.assertEqual(0, result.returncode, result.stderr[-3000:])
        self.assertNotIn('pip_uninstall nova-lifecycle', self.calls())
        self.assertEqual(UPSTREAM_DRIVER, self.driver_in(self.cpu_conf))

    def test_clean_without_config_files(self):
        result = self.run_script('clean.sh', GLOBAL_VENV='False')
        self.assertEqual(0, result.returncode, result.stderr[-3000:])
        self.assertFalse(os.path.exists(self.nova_conf))
        self.assertFalse(os.path.exists(self.cpu_conf))
