"""One subpackage per paper; each exports `PAPER` (a `minirepro.registry.Paper`)."""
