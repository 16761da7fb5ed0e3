"""Domain events of the Billing context, one folder per event version."""
