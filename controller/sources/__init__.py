"""Where desired state comes from: Git and local folders, loaded and validated."""
