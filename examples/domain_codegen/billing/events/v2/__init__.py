"""Version 2 of the invoice events."""
