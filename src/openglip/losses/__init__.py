"""Training losses. ``GroundingLoss`` is GLIP's; GLIPv2 and RegionCLIP losses join it here."""

from ..data.collate import GroundingTarget
from .grounding import GroundingLoss, atss_assign

__all__ = ["GroundingLoss", "GroundingTarget", "atss_assign"]
