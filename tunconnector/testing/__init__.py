"""Test support shipped with the package (the QEMU VM harness lives in :mod:`.vm`)."""
