"""Reading frames, writing outputs atomically, manifests and provenance."""
