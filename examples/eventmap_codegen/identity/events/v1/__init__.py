"""Version 1 of the user events."""
