"""Todo Steps."""
