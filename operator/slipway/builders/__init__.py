"""Pure builders: parsed spec in, child manifests (plain dicts) out. No I/O."""
