"""Parsing `ethtool -k` output (host TAPs and Linux guests alike)."""

from __future__ import annotations

# ethtool's long feature names and the short names `ethtool -K` takes.
SHORT_NAMES = {
    "rx-checksumming": "rx", "tx-checksumming": "tx", "scatter-gather": "sg",
    "tcp-segmentation-offload": "tso", "generic-segmentation-offload": "gso",
    "generic-receive-offload": "gro", "large-receive-offload": "lro",
    "udp-fragmentation-offload": "ufo",
}
OFFLOADS = ("rx", "tx", "sg", "tso", "gso", "gro", "lro")


def parse_features(text: str) -> dict[str, dict[str, bool]]:
    """Parse `ethtool -k` into {name: {"on": bool, "fixed": bool}}, by short
    name where ethtool has one. Sub-features (indented) are kept by their own
    names."""
    result: dict[str, dict[str, bool]] = {}
    for line in text.splitlines():
        if ":" not in line or line.startswith("Features for"):
            continue
        name, _, value = line.strip().partition(":")
        words = value.split()
        if not words or words[0] not in ("on", "off"):
            continue
        result[SHORT_NAMES.get(name, name)] = {"on": words[0] == "on", "fixed": "[fixed]" in value}
    return result


def offload_states(text: str) -> dict[str, bool]:
    """The on/off state of the main offloads (OFFLOADS) from `ethtool -k`."""
    features = parse_features(text)
    return {name: features[name]["on"] for name in OFFLOADS if name in features}
