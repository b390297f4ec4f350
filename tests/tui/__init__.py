"""The Textual console's tests: the console driven through Pilot, its model, lines and snapshots."""
