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

"""The all-in-one main job: a single-host Nova driven through its API.

``python -m mainjob`` starts Nova's API, conductor, scheduler, placement
(SQLite databases, in one process, from Nova's functional-test fixtures)
and one nova-compute, first on the plugin's driver and then on upstream's
``libvirt.LibvirtDriver``, runs the same power-state scenarios through the
REST API on each, and prints one table with both, plus a PNG plot of the
latencies. By default the compute talks to Nova's fake libvirt;
``--libvirt-uri qemu:///system`` uses a real libvirtd and QEMU with the
tiny test guest. See doc/source/mainjob.rst.

The job is not part of the installed package (it runs on Nova's test
code, the plugin's test fixtures and the checkout's ``tools/``): it runs
from the top of a checkout, with nova and the plugin installed.

Modules: :mod:`cli` (arguments, exit status), :mod:`runner` (one
deployment per driver, verdicts), :mod:`deployment` (Nova in one process
on the fake), :mod:`realvirt` (the same on a real libvirtd), :mod:`fakevirt`
(the fake hypervisor's side), :mod:`upstream` (upstream's event threads in
the harness), :mod:`environment` (what the scenarios act through),
:mod:`scenarios`, :mod:`results`, :mod:`tables` (table, JSON) and
:mod:`plot` (PNG).
"""
