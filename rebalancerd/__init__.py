"""rebalancerd: policy-driven live-migration balancer for libvirt/KVM fleets."""

__version__ = "0.1.0"
