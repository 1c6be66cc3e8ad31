"""willow.compiler."""
