"""mixrec.tuning."""
