"""Every field type and import style eventmap-gen supports."""
