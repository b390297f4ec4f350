"""The peers, as a user of each would write them: stock settings, one task doing bench.work."""
