"""mixrec.features."""
