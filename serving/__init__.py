"""mixrec.serving."""
