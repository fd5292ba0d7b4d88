"""Integration tests against a real libvirtd (qemu:///system) and QEMU.

They need ``tools/libvirt-setup.sh`` (libvirtd running) and
``tools/build-test-guest.sh`` (the tiny guest) to have run on the machine;
otherwise they are skipped, or fail when ``NOVA_LIFECYCLE_REQUIRE_LIBVIRT=1``
(as in CI). Run them with ``tox -e integration``.
"""
