"""Test harness for virtio-net datapaths (vtnet/netmap) in QEMU guests."""

__version__ = "0.1.0"
