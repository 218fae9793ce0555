"""Local control API of the daemon: JSON lines over a unix stream socket.

Only local root, or members of a configured group, may use it (checked on every connection with
SO_PEERCRED, on top of the socket file's owner and mode). See ``server.py`` and ``client.py``.
"""
