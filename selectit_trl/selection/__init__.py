"""From measurements to kept rows: the pipeline, the probe, diversity, recycling, and the processes of one run."""
