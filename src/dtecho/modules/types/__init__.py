"""The module types dtecho ships, each registered as a ``dtecho.modules`` entry point."""
