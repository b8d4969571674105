"""PLACEHOLDER: the ModelDeployment helper replaces this module."""
