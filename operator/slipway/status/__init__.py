"""Pure status derivations: observed children in, status (and events) out."""
