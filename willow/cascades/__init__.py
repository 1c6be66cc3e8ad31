"""willow.cascades."""
