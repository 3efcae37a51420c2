"""What `Registry` needs from whatever holds the version records: the Catalog interface."""
