"""Thin I/O adapters: the only code that touches devices, sockets and netlink."""
