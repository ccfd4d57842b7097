"""Several kit servers behind one address for a room of participants (`python -m qwenkit room`).

keys: the participants' key file (0600; edit it to revoke). probe: each server's /health.
nginx: the router's config and process. tls: a certificate for a router on the LAN.
room: the Room that ties them together and keeps the router in step with the servers.
"""
from qwenkit.errors import RoomError
from qwenkit.room.room import Room, format_load, read_state, server_key, start

__all__ = ["Room", "RoomError", "format_load", "read_state", "server_key", "start"]
