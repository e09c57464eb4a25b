"""mixrec.pipelines."""
