"""The model lifecycle: versions and aliases, experiments, continuous learning, drift."""
