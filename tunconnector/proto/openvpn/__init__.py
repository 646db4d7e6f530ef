"""OpenVPN wire formats as connection implementations: static-key, the TLS client and
the TLS server (its sessions, acceptor and stateless handshake gate).

Sans-I/O like the rest of :mod:`tunconnector.proto`; see ``docs/openvpn.md``.
"""
