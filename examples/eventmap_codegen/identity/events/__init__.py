"""Domain events of the Identity context, one folder per event version."""
