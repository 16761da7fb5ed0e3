"""Infrastructure: the generated mapping between domain and store events."""
