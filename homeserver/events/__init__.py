"""Pure Matrix event logic for room versions 10 and 11.

Nothing in this package performs network or database I/O; the only file
access is key persistence in :mod:`homeserver.events.signing`.
"""

from homeserver.events.room_versions import (
    DEFAULT_ROOM_VERSION,
    KNOWN_ROOM_VERSIONS,
    RoomVersion,
    UnsupportedRoomVersion,
    get_room_version,
)

__all__ = [
    "DEFAULT_ROOM_VERSION",
    "KNOWN_ROOM_VERSIONS",
    "RoomVersion",
    "UnsupportedRoomVersion",
    "get_room_version",
]
