"""Training losses. ``GroundingLoss`` is GLIP's; GLIPv2 and RegionCLIP losses join it here."""

from .grounding import GroundingLoss, GroundingTarget, atss_assign

__all__ = ["GroundingLoss", "GroundingTarget", "atss_assign"]
