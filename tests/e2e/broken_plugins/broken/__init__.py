"""A plugin that fails to import: the daemon must refuse to boot and name it."""

raise ImportError("the broken plugin's dependency is missing")
