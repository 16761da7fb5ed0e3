"""Version 2 of the user events."""
