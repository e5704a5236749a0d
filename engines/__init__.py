"""Everything that runs a model: config schema, registry, chat and embedding engines."""
