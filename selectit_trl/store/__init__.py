"""What is kept on disk: the append-only ledger of measurements, the selection's output files, and the typed summary."""
