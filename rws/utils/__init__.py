"""Small shared helpers: atomic I/O, provenance, seeding."""
