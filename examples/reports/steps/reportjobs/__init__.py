"""The reports example's helpers: the sales query (``sales``) and the renderers (``render``)."""
