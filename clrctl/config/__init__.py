"""The config: YAML loading, the schema and its defaults, the resolved plan of a run."""
