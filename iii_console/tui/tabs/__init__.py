"""One module per console tab; each tab is a dumb widget with ``show(view)``."""
