"""Benchmark harness: tunconnector against veth, vxlan, OpenVPN and socat in one run.

``python -m bench`` (or ``python -m bench --quick``) builds two network namespaces joined
by veth, starts every peer in turn between them and measures throughput, latency,
small-packet rate, CPU and integrity. See ``bench/__main__.py`` for the options.
"""
