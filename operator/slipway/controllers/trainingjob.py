"""TrainingJob handlers (being written)."""
