"""Guest OS profiles: prompts, names, commands and parsers per guest OS.

One small class per OS, chosen by name (`get_profile`); scenario and library
code asks the profile instead of testing which OS it is.
"""

from __future__ import annotations

from harness.errors import ConfigError
from harness.guests.base import GuestProfile
from harness.guests.freebsd import FreeBSDProfile
from harness.guests.linux import LinuxProfile

PROFILES: dict[str, type[GuestProfile]] = {"linux": LinuxProfile, "freebsd": FreeBSDProfile}


def get_profile(name: str) -> GuestProfile:
    try:
        return PROFILES[name]()
    except KeyError:
        raise ConfigError(f"unknown guest {name!r}",
                          hint=f"use --guest with one of: {', '.join(sorted(PROFILES))}") from None


__all__ = ["GuestProfile", "PROFILES", "get_profile"]
