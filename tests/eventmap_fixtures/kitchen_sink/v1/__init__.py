"""Version 1 events."""
