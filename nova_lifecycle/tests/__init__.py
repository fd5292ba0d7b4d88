"""Test package: choose Nova's concurrency mode before anything else loads.

Nova's own test packages call ``monkey_patch.patch()`` first, so the
environment decides the mode: ``OS_NOVA_DISABLE_EVENTLET_PATCHING=true``
runs the tests with native threads, anything else with eventlet.
"""

from nova import monkey_patch

monkey_patch.patch()
