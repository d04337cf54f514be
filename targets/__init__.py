"""ubique.targets: Target descriptions and the registry of targets."""
from ubique.targets.registry import available, get_target, host_target, origins, register
from ubique.targets.target import Target

__all__ = ["Target", "available", "get_target", "host_target", "origins", "register"]
