"""Libraries: pure functions and I/O helpers; nothing here imports from pausetune.stages."""
