"""Input packages for the eventmap-gen tests (read by the generator, imported by tests)."""
