"""The Identity bounded context of the eventmap-gen example."""
