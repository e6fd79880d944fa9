"""ModelZoo: checkpoint registry — names to object-storage URIs, verified downloads, local cache."""
