"""Version 1 of the invoice events."""
