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

"""A nova-compute process on the plugin that a test can SIGTERM.

Usage: ``python -m nova_lifecycle.tests.functional.sigterm_compute DIR``

What runs, all in this one process (oslo.messaging's ``fake://`` transport
only connects services of one process):

* Nova's functional deployment (``LifecycleTestBase.setUp``): in-memory
  SQLite databases, API, conductor, scheduler, the placement fixture, and
  one nova-compute, ``compute1``, with the plugin's driver on Nova's fake
  libvirt; its lifecycle callbacks run on the driver's libvirt event-loop
  thread (:class:`EventsOnLibvirtLoop`);
* ``SERVERS`` servers booted through the API;
* a test hook: a thread that keeps libvirt sending lifecycle events
  (PAUSED/RESUMED pairs; the manager's handler costs ``HANDLER_COST``
  seconds each, so a backlog builds up) and, first, a STOPPED_DESTROYED
  for ``HELD`` of the servers (not guest-initiated: held for
  ``stopped_event_delay``, still held when the service stops);
* then, as ``nova.cmd.compute.main`` does, ``nova.service.serve(server,
  workers=1, no_fork=True)`` and ``nova.service.wait()``: oslo.service's
  launcher installs its SIGTERM handler, which stops the service (Nova's
  graceful shutdown, bounded by ``graceful_shutdown_timeout`` through
  SIGALRM). The fixture already started the service, so the launcher's
  ``start`` is skipped.

Once the launcher handles SIGTERM and the burst is being processed, the
process writes ``DIR/ready.json`` (the held servers' UUIDs and the ledger
at that moment); its log, at INFO, goes to ``DIR/compute.log``.
"""

import inspect
import json
import logging
import os
import signal
import sys
import threading
import time

# Nova's test packages choose the concurrency mode first.
from nova_lifecycle.tests.functional import base  # noqa: I100,I202

import nova.conf  # noqa: I100
from nova import service as nova_service
from oslo_service import service as oslo_service

from nova_lifecycle.eventpath import libvirt_events
from nova_lifecycle.tests.functional import shutdown_fixtures

GRACEFUL_SHUTDOWN_TIMEOUT = 10
MANAGER_SHUTDOWN_TIMEOUT = 2
SERVERS = 12
HELD = 4
HANDLER_COST = 0.005
# Keep at most this many events waiting for dispatch, so the burst lasts
# until the service stops without growing without bound.
BACKLOG = 400
# The burst ends here if the service never stops.
MAX_EVENTS = 100000
BOOT_TIMEOUT = 90
HOST = 'compute1'
LOG_FORMAT = '%(asctime)s %(process)d %(levelname)s [%(name)s] %(message)s'


class _Deployment(base.LifecycleTestBase):
    """Nova's functional deployment, set up outside a test runner."""

    def runTest(self):
        pass


def _log_to(path):
    handler = logging.FileHandler(path)
    handler.setLevel(logging.INFO)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.getLogger().addHandler(handler)


def _boot(deployment):
    body = deployment._build_server(networks='none')
    body.update(min_count=SERVERS, max_count=SERVERS)
    deployment.api.post_server({'server': body})
    servers = [s for s in deployment.api.get_servers()
               if s['name'].startswith(body['name'])]
    if not base.wait_until(lambda: all(
            deployment.api.get_server(s['id'])['status'] == 'ACTIVE'
            for s in servers), timeout=BOOT_TIMEOUT, interval=0.5):
        raise RuntimeError('servers not ACTIVE after %ss' % BOOT_TIMEOUT)
    return [s['id'] for s in servers]


def _slow_listener(driver):
    """The manager's handler, costing HANDLER_COST per event."""
    handle = driver._compute_event_callback

    def slow(event):
        time.sleep(HANDLER_COST)  # what the handler costs, not a wait
        return handle(event)

    driver._compute_event_callback = slow


class Burst:
    """Keeps libvirt sending lifecycle events until its loop stops."""

    def __init__(self, driver, connection, uuids):
        self._driver = driver
        self._conn = connection
        self._domains = [connection.lookupByUUIDString(u) for u in uuids]
        self.sent = 0
        self.thread = threading.Thread(target=self._run, name='test-burst',
                                       daemon=True)

    def destroy_behind_novas_back(self, uuids):
        for uuid in uuids:
            dom = self._conn.lookupByUUIDString(uuid)
            self._conn._emit_lifecycle(
                dom, libvirt_events.DOMAIN_EVENT_SHUTDOWN,
                libvirt_events.DOMAIN_EVENT_SHUTDOWN_HOST)
            shutdown_fixtures.mark_stopped(
                self._conn, dom,
                libvirt_events.DOMAIN_EVENT_STOPPED_DESTROYED)

    def _run(self):
        handler = self._driver.event_handler
        event_path = self._driver.event_path
        while handler.status()['running'] and self.sent < MAX_EVENTS:
            if self.sent - event_path.status().counts['delivered'] > BACKLOG:
                # Pace the generator (and let green threads run).
                time.sleep(0.01)
                continue
            dom = self._domains[self.sent // 2 % len(self._domains)]
            if self.sent % 2:
                self._conn._emit_lifecycle(
                    dom, libvirt_events.DOMAIN_EVENT_RESUMED, 0)
            else:
                self._conn._emit_lifecycle(
                    dom, libvirt_events.DOMAIN_EVENT_SUSPENDED, 0)
            self.sent += 1


def _announce_when_ready(path, driver, held, burst):
    """Write ``path`` once SIGTERM is handled and the burst is queued."""
    def ready():
        if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
            return None
        status = driver.event_path.status()
        if status.dispatch_queue > 0 and len(status.held) == len(held):
            return status
        return None

    status = ready()
    while status is None:
        time.sleep(0.05)
        status = ready()
    stats = dict(status.counts, dispatch_queue=status.dispatch_queue,
                 held_stopped=len(status.held))
    data = {'held': held, 'stats': stats, 'sent': burst.sent,
            'pid': os.getpid()}
    with open(path + '.tmp', 'w') as f:
        json.dump(data, f)
    os.rename(path + '.tmp', path)


def _register_service_opts(conf):
    """oslo.service's launcher options, before its launcher registers them.

    oslo.service 4.5 (2026.1) on has ``opts.register_service_opts``;
    earlier releases list them only for the config generator.
    """
    try:
        from oslo_service import opts
    except ImportError:
        for group, options in oslo_service.list_opts():
            conf.register_opts(options, group)
        return
    opts.register_service_opts(conf)


def _serve_in_this_process(compute):
    """``nova.service.serve`` with one worker, in this process.

    Nova 33 on passes ``no_fork`` to oslo.service (whose threading
    launcher forks even one worker without it); nova 31 and 32 have no
    such argument, and their launcher runs one worker in-process.
    """
    if 'no_fork' in inspect.signature(nova_service.serve).parameters:
        nova_service.serve(compute, workers=1, no_fork=True)
    else:
        nova_service.serve(compute, workers=1)


def main(workdir):
    deployment = _Deployment()
    deployment.setUp()
    # The launcher owns SIGALRM (graceful_shutdown_timeout): cancel the
    # test timeout's alarm.
    signal.alarm(0)
    _log_to(os.path.join(workdir, 'compute.log'))
    _register_service_opts(nova.conf.CONF)
    deployment.flags(graceful_shutdown_timeout=GRACEFUL_SHUTDOWN_TIMEOUT)
    if 'manager_shutdown_timeout' in nova.conf.CONF:
        # Nova 33 on; nova 31 and 32 have no graceful shutdown.
        deployment.flags(manager_shutdown_timeout=MANAGER_SHUTDOWN_TIMEOUT)
    loop = deployment.useFixture(shutdown_fixtures.EventsOnLibvirtLoop())
    compute = deployment.start_lifecycle_compute(HOST)
    driver = deployment.driver
    loop.attach(deployment.connection)
    uuids = _boot(deployment)
    _slow_listener(driver)
    burst = Burst(driver, deployment.connection, uuids[HELD:])
    burst.destroy_behind_novas_back(uuids[:HELD])
    burst.thread.start()
    announcer = threading.Thread(
        target=_announce_when_ready, name='test-ready', daemon=True,
        args=(os.path.join(workdir, 'ready.json'), driver, uuids[:HELD],
              burst))
    announcer.start()
    # nova-compute's own ending: the launcher runs the service until a
    # signal stops it. The deployment already started it.
    compute.start = lambda: None
    _serve_in_this_process(compute)
    nova_service.wait()


if __name__ == '__main__':
    main(sys.argv[1])
