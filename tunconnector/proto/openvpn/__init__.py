"""OpenVPN wire formats as connection implementations: static-key and the TLS client.

Sans-I/O like the rest of :mod:`tunconnector.proto`; see ``docs/openvpn.md``.
"""
